//! The load: Sharespine and ComputeStacks onboardings interleaved, each with
//! the events its subscriber should see (its provider's own plan), and the
//! check that the events seen are those, in order.

use serde_json::{json, Value};

use crate::support::requests::{computestacks_request, expected_events, sharespine_request};
use crate::{COMPUTESTACKS, CS_PASSWORD, SHARESPINE};

/// A request of the load and what should come of it.
pub struct Planned {
    pub id: String,
    pub body: Value,
    /// The events expected in the subscriber's queue, in order: `accepted`,
    /// `step_completed:<step>`..., `completed`.
    pub expected: Vec<String>,
    /// Sharespine: the tenant's reference; ComputeStacks: (e-mail, project).
    pub sharespine_ref: Option<String>,
    pub cs: Option<(String, String)>,
}

/// The load, in publishing order.
pub fn plan() -> Vec<Planned> {
    let mut out = Vec::new();
    // Interleaved: two Sharespine, one ComputeStacks, ...
    let (mut s, mut c) = (0, 0);
    while s < SHARESPINE || c < COMPUTESTACKS {
        for _ in 0..2 {
            if s < SHARESPINE {
                let id = format!("cluster-ss-{s:02}");
                let reference = format!("cluster{s}");
                let body = sharespine_request(&id, &reference, &["anna", "bob"], Some("anna"));
                let expected = expected_events(&body);
                out.push(Planned {
                    id,
                    body,
                    expected,
                    sharespine_ref: Some(reference),
                    cs: None,
                });
                s += 1;
            }
        }
        if c < COMPUTESTACKS {
            let id = format!("cluster-cs-{c:02}");
            let email = format!("cs{c}@cluster.example.com");
            let project = format!("site-{id}");
            let body = computestacks_request(
                &id,
                &email,
                CS_PASSWORD,
                &project,
                json!({"product": "small"}),
            );
            let expected = expected_events(&body);
            out.push(Planned {
                id,
                body,
                expected,
                sharespine_ref: None,
                cs: Some((email, project)),
            });
            c += 1;
        }
    }
    out
}

pub fn event_key(e: &Value) -> String {
    match e["event"].as_str() {
        Some("step_completed") => format!("step_completed:{}", e["step"].as_str().unwrap_or("?")),
        Some(other) => other.to_string(),
        None => "?".into(),
    }
}

/// Whether `seen` is `expected` in order, with copies of events already seen
/// (at least once) allowed anywhere after their first; the number of copies.
pub fn in_order(seen: &[String], expected: &[String]) -> Result<usize, String> {
    let mut next = 0;
    let mut copies = 0;
    for (i, k) in seen.iter().enumerate() {
        if next < expected.len() && *k == expected[next] {
            next += 1;
        } else if expected[..next].contains(k) {
            copies += 1;
        } else {
            return Err(format!(
                "event {i} is {k}, expected {:?}",
                expected.get(next)
            ));
        }
    }
    if next == expected.len() {
        Ok(copies)
    } else {
        Err(format!("missing {:?}", &expected[next..]))
    }
}
