//! The run's plan, from the seed: the request mix across the three
//! providers, what each is meant to end in (five are meant to fail), and the
//! moments a worker is killed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::requests::{computestacks_request, magento_request, sharespine_request};
use crate::{CS_PASSWORD, KILLS, KILL_WINDOW_MS, PUBLISH_SPREAD_MS, REQUESTS, WORKERS};

/// How a request is meant to end.
#[derive(Clone, Debug, PartialEq)]
pub enum Intent {
    Complete,
    /// `failed` with this error kind at this step (`None`: before any step).
    Fail {
        kind: &'static str,
        step: Option<&'static str>,
    },
}

/// What identifies a request's resources in the sandbox.
#[derive(Clone, Debug)]
pub enum Shape {
    Sharespine {
        reference: String,
        users: Vec<String>,
        login: Option<String>,
    },
    ComputeStacks {
        email: String,
        project: String,
        /// The test made a user with this e-mail before the run.
        taken: bool,
    },
    MagentoBi {
        company: String,
    },
}

impl Shape {
    pub fn provider(&self) -> &'static str {
        match self {
            Shape::Sharespine { .. } => "sharespine",
            Shape::ComputeStacks { .. } => "computestacks",
            Shape::MagentoBi { .. } => "magento_bi",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Planned {
    pub id: String,
    pub at: Duration,
    pub body: Value,
    pub shape: Shape,
    pub intent: Intent,
}

#[derive(Clone, Debug)]
pub struct Kill {
    pub at: Duration,
    /// Index into the live workers.
    pub slot: usize,
}

pub struct Plan {
    pub requests: Vec<Planned>,
    pub kills: Vec<Kill>,
    pub job_duration_ms: u64,
}

/// The request mix, its intended failures and the kill moments, from `seed`.
pub fn plan(seed: u64, tag: &str) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let job_duration_ms = rng.random_range(1000..=2000);
    // Five meant to fail, at random positions; the rest a random mix.
    let mut kinds: Vec<&str> = vec![
        "cs_taken_email",
        "cs_taken_email",
        "cs_failing_order",
        "sharespine_unknown_login",
        "magento_invalid",
    ];
    while kinds.len() < REQUESTS {
        let roll = rng.random_range(0..10);
        kinds.push(match roll {
            0..=3 => "sharespine",
            4..=6 => "computestacks",
            _ => "magento_bi",
        });
    }
    // Fisher-Yates with our rng (stable across rand versions' shuffle changes).
    for i in (1..kinds.len()).rev() {
        let j = rng.random_range(0..=i);
        kinds.swap(i, j);
    }
    let logins = ["anna", "bob", "carl", "dora"];
    let mut at = Duration::ZERO;
    let gap_max = 2 * PUBLISH_SPREAD_MS / REQUESTS as u64;
    let mut requests = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let provider = match *kind {
            "sharespine" | "sharespine_unknown_login" => "sharespine",
            "magento_bi" | "magento_invalid" => "magento_bi",
            _ => "computestacks",
        };
        let id = format!("chaos-{tag}-{i:02}-{provider}");
        let (body, shape, intent) = match *kind {
            "sharespine" | "sharespine_unknown_login" => {
                let reference = format!("chaos{tag}x{i}");
                let n = rng.random_range(0..=3);
                let users: Vec<String> = logins[..n].iter().map(|s| s.to_string()).collect();
                let (login, intent) = if *kind == "sharespine_unknown_login" {
                    (
                        Some("nobody".to_string()),
                        Intent::Fail {
                            kind: "rejected",
                            step: Some("create_login_url"),
                        },
                    )
                } else if n > 0 && rng.random_bool(0.6) {
                    (
                        Some(users[rng.random_range(0..n)].clone()),
                        Intent::Complete,
                    )
                } else {
                    (None, Intent::Complete)
                };
                let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
                let body = sharespine_request(&id, &reference, &user_refs, login.as_deref());
                (
                    body,
                    Shape::Sharespine {
                        reference,
                        users,
                        login,
                    },
                    intent,
                )
            }
            "magento_bi" | "magento_invalid" => {
                let company = format!("Chaos Co {tag} {i}");
                let mut body = magento_request(&id, &company, &format!("db-pw-{i}"));
                let intent = if *kind == "magento_invalid" {
                    body["input"]["invite"]
                        .as_object_mut()
                        .unwrap()
                        .remove("email");
                    Intent::Fail {
                        kind: "invalid_request",
                        step: None,
                    }
                } else {
                    Intent::Complete
                };
                (body, Shape::MagentoBi { company }, intent)
            }
            _ => {
                let taken = *kind == "cs_taken_email";
                let email = if taken {
                    format!("taken{i}@chaos.example.com")
                } else {
                    format!("cs{i}@chaos.example.com")
                };
                let project = format!("site-{id}");
                let resources = match rng.random_range(0..3) {
                    0 => json!({"product": "small"}),
                    1 => json!({"product": "medium"}),
                    _ => json!({"product_id": 3}),
                };
                let body = computestacks_request(&id, &email, CS_PASSWORD, &project, resources);
                let intent = match *kind {
                    "cs_taken_email" => Intent::Fail {
                        kind: "rejected",
                        step: Some("create_user"),
                    },
                    "cs_failing_order" => Intent::Fail {
                        kind: "job_failed",
                        step: Some("poll_order"),
                    },
                    _ => Intent::Complete,
                };
                (
                    body,
                    Shape::ComputeStacks {
                        email,
                        project,
                        taken,
                    },
                    intent,
                )
            }
        };
        requests.push(Planned {
            id,
            at,
            body,
            shape,
            intent,
        });
        at += Duration::from_millis(rng.random_range(0..=gap_max));
    }
    let mut kills: Vec<Kill> = (0..KILLS)
        .map(|_| Kill {
            at: Duration::from_millis(rng.random_range(KILL_WINDOW_MS.0..=KILL_WINDOW_MS.1)),
            slot: rng.random_range(0..WORKERS),
        })
        .collect();
    kills.sort_by_key(|k| k.at);
    Plan {
        requests,
        kills,
        job_duration_ms,
    }
}
