//! What a step's result comes to, decided in one place: go on, run it again
//! after a delay (a poll or a retry), or end the request `failed`.
//!
//! Pure: [`classify`] maps the provider's answer and the step's situation
//! (attempts and polls so far, the provider's policies, the clock's value and
//! a jitter value, both passed in) to a [`Decision`]. It counts nothing, reads
//! no clock and draws nothing at random; `StepRun` acts on the decision
//! (records, publishes, counts, logs), in the order the decision implies.

use std::time::Duration;

use serde_json::{Map, Value};

use super::schedule;
use super::step::{PollPolicy, RetryPolicy, StepError, StepOutcome};
use crate::domain::{ErrorKind, RetryReason};

/// What [`classify`] knows of the step besides the provider's answer.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    /// The step's contract name, for the reasons it writes.
    pub step: &'a str,
    /// Transient failures of this step so far.
    pub attempt: u32,
    /// "Not yet" answers of this step so far.
    pub polls: u32,
    /// The poll deadline fixed at the first poll, if polled before.
    pub poll_deadline_ms: Option<i64>,
    /// The state the last "not yet" kept; a retry hands it on unchanged.
    pub poll_state: Option<Value>,
    /// `None` for a one-shot step.
    pub poll_policy: Option<PollPolicy>,
    pub retry_policy: RetryPolicy,
    /// Now, in ms since the epoch.
    pub now_ms: i64,
    /// Where a retry's delay falls in its range, in `0.0..=1.0` (full jitter).
    pub jitter: f64,
}

/// Why a step runs again.
#[derive(Debug, Clone, PartialEq)]
pub enum Again {
    /// The provider's job is not finished; `status` is what it said.
    Poll { status: String },
    /// A transient failure, worth another attempt.
    Retry {
        reason: RetryReason,
        message: String,
    },
}

/// What a step came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The step is done: go on to the next one.
    Advance {
        outputs: Map<String, Value>,
        secrets: Map<String, Value>,
    },
    /// Run this step again after `delay`, with these counts.
    Again {
        delay: Duration,
        why: Again,
        attempt: u32,
        polls: u32,
        poll_deadline_ms: Option<i64>,
        poll_state: Option<Value>,
        /// The call may have reached the provider (it timed out, broke off,
        /// failed on the provider's side, or answered something unreadable
        /// after acting).
        uncertain: bool,
    },
    /// The request ends `failed`.
    Fail {
        kind: ErrorKind,
        http_status: Option<u16>,
        message: String,
    },
}

impl Decision {
    /// The `outcome` label of `onboarding_steps_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Advance { .. } => "done",
            Decision::Again {
                why: Again::Poll { .. },
                ..
            } => "pending",
            Decision::Again {
                why: Again::Retry { .. },
                ..
            } => "retry",
            Decision::Fail { kind, .. } => kind.as_str(),
        }
    }
}

/// Classifies a step's result.
pub fn classify(result: Result<StepOutcome, StepError>, s: Situation<'_>) -> Decision {
    match result {
        Ok(StepOutcome::Done(done)) => Decision::Advance {
            outputs: done.outputs,
            secrets: done.secrets,
        },
        Ok(StepOutcome::Pending { status, state }) => {
            let Some(policy) = s.poll_policy else {
                return Decision::Fail {
                    kind: ErrorKind::JobFailed,
                    http_status: None,
                    message: format!("{}: a one-shot step answered \"not yet\"", s.step),
                };
            };
            let deadline = s
                .poll_deadline_ms
                .unwrap_or(s.now_ms + policy.deadline.as_millis() as i64);
            if s.now_ms >= deadline {
                return Decision::Fail {
                    kind: ErrorKind::TimedOut,
                    http_status: None,
                    message: format!(
                        "{}: job still {status:?} after {} polls, past its deadline of {} s",
                        s.step,
                        s.polls + 1,
                        policy.deadline.as_secs()
                    ),
                };
            }
            let delay = policy
                .wait(s.polls)
                .min(Duration::from_millis((deadline - s.now_ms).max(0) as u64));
            Decision::Again {
                delay,
                why: Again::Poll { status },
                attempt: s.attempt,
                polls: s.polls + 1,
                poll_deadline_ms: Some(deadline),
                poll_state: state,
                uncertain: false,
            }
        }
        Err(StepError::Transient {
            reason,
            retry_after,
            http_status,
            message,
        }) => {
            let attempt = s.attempt + 1;
            if attempt >= s.retry_policy.max_attempts {
                return Decision::Fail {
                    kind: ErrorKind::Exhausted,
                    http_status,
                    message: format!("{message} (gave up after {attempt} attempts)"),
                };
            }
            Decision::Again {
                delay: schedule::retry_delay(&s.retry_policy, attempt, retry_after, s.jitter),
                why: Again::Retry { reason, message },
                attempt,
                polls: s.polls,
                poll_deadline_ms: s.poll_deadline_ms,
                poll_state: s.poll_state,
                uncertain: matches!(
                    reason,
                    RetryReason::Timeout
                        | RetryReason::Connection
                        | RetryReason::BadResponse
                        | RetryReason::ServerError
                ),
            }
        }
        Err(StepError::Rejected {
            http_status,
            message,
        }) => Decision::Fail {
            kind: ErrorKind::Rejected,
            http_status,
            message,
        },
        Err(StepError::JobFailed { message }) => Decision::Fail {
            kind: ErrorKind::JobFailed,
            http_status: None,
            message,
        },
    }
}

/// Until when every worker holds the provider's steps, when its answer asks
/// for it: a 429 or a 5xx with `Retry-After` (whether or not the step is
/// tried again).
pub fn shared_pause(result: &Result<StepOutcome, StepError>, now_ms: i64) -> Option<i64> {
    match result {
        Err(StepError::Transient {
            reason: RetryReason::RateLimited | RetryReason::ServerError,
            retry_after: Some(wait),
            ..
        }) => Some(now_ms + wait.as_millis() as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::step::StepDone;
    use serde_json::json;

    const NOW: i64 = 1_000_000;

    /// Why, the provider's answer, the situation, then the expected decision,
    /// its `steps_total` label and the shared pause it asks for.
    type Row = (
        &'static str,
        Result<StepOutcome, StepError>,
        Situation<'static>,
        Decision,
        &'static str,
        Option<i64>,
    );

    fn situation(attempt: u32, polls: u32, poll_deadline_ms: Option<i64>) -> Situation<'static> {
        Situation {
            step: "create_user",
            attempt,
            polls,
            poll_deadline_ms,
            poll_state: Some(json!({"seen": [1]})),
            poll_policy: Some(PollPolicy {
                interval: Duration::from_millis(500),
                growth: 2.0,
                max_interval: Duration::from_secs(4),
                deadline: Duration::from_secs(60),
            }),
            retry_policy: RetryPolicy {
                max_attempts: 5,
                base: Duration::from_millis(100),
                cap: Duration::from_millis(1_000),
            },
            now_ms: NOW,
            jitter: 0.5,
        }
    }

    fn transient(
        reason: RetryReason,
        retry_after_ms: Option<u64>,
    ) -> Result<StepOutcome, StepError> {
        Err(StepError::Transient {
            reason,
            retry_after: retry_after_ms.map(Duration::from_millis),
            http_status: Some(503),
            message: "busy".into(),
        })
    }

    fn pending(state: Option<Value>) -> Result<StepOutcome, StepError> {
        Ok(StepOutcome::Pending {
            status: "running".into(),
            state,
        })
    }

    fn again(
        delay_ms: u64,
        why: Again,
        attempt: u32,
        polls: u32,
        deadline: Option<i64>,
        state: Option<Value>,
        uncertain: bool,
    ) -> Decision {
        Decision::Again {
            delay: Duration::from_millis(delay_ms),
            why,
            attempt,
            polls,
            poll_deadline_ms: deadline,
            poll_state: state,
            uncertain,
        }
    }

    fn retry(reason: RetryReason) -> Again {
        Again::Retry {
            reason,
            message: "busy".into(),
        }
    }

    fn poll() -> Again {
        Again::Poll {
            status: "running".into(),
        }
    }

    fn fail(kind: ErrorKind, http_status: Option<u16>, message: &str) -> Decision {
        Decision::Fail {
            kind,
            http_status,
            message: message.into(),
        }
    }

    #[test]
    fn every_result_is_classified_as_the_table_says() {
        let kept = Some(json!({"seen": [1]}));
        let one_shot = |mut s: Situation<'static>| {
            s.poll_policy = None;
            s
        };
        let cases: Vec<Row> = vec![
            (
                "done: go on with its outputs",
                Ok(StepOutcome::Done(StepDone::default().with("id", 7).with_secret("pw", "s"))),
                situation(2, 0, None),
                Decision::Advance {
                    outputs: json!({"id": 7}).as_object().unwrap().clone(),
                    secrets: json!({"pw": "s"}).as_object().unwrap().clone(),
                },
                "done",
                None,
            ),
            (
                "first not yet: poll after the interval, the deadline fixed from now",
                pending(Some(json!("x"))),
                situation(0, 0, None),
                again(500, poll(), 0, 1, Some(NOW + 60_000), Some(json!("x")), false),
                "pending",
                None,
            ),
            (
                "third not yet: the interval grown twice",
                pending(None),
                situation(1, 2, Some(NOW + 30_000)),
                again(2_000, poll(), 1, 3, Some(NOW + 30_000), None, false),
                "pending",
                None,
            ),
            (
                "not yet near the deadline: the wait is cut at it",
                pending(None),
                situation(0, 5, Some(NOW + 300)),
                again(300, poll(), 0, 6, Some(NOW + 300), None, false),
                "pending",
                None,
            ),
            (
                "not yet at the deadline: timed out",
                pending(None),
                situation(0, 9, Some(NOW)),
                fail(ErrorKind::TimedOut, None, "create_user: job still \"running\" after 10 polls, past its deadline of 60 s"),
                "timed_out",
                None,
            ),
            (
                "not yet from a one-shot step: the job failed",
                pending(None),
                one_shot(situation(0, 0, None)),
                fail(ErrorKind::JobFailed, None, "create_user: a one-shot step answered \"not yet\""),
                "job_failed",
                None,
            ),
            (
                "transient timeout: retried with jitter, the call may have acted",
                transient(RetryReason::Timeout, None),
                situation(0, 0, None),
                again(50, retry(RetryReason::Timeout), 1, 0, None, kept.clone(), true),
                "retry",
                None,
            ),
            (
                "transient connection failure, third retry: the ceiling doubled twice; poll counts kept",
                transient(RetryReason::Connection, None),
                situation(2, 3, Some(NOW + 9)),
                again(200, retry(RetryReason::Connection), 3, 3, Some(NOW + 9), kept.clone(), true),
                "retry",
                None,
            ),
            (
                "server error with Retry-After: never sooner, and the provider is paused",
                transient(RetryReason::ServerError, Some(3_000)),
                situation(0, 0, None),
                again(3_000, retry(RetryReason::ServerError), 1, 0, None, kept.clone(), true),
                "retry",
                Some(NOW + 3_000),
            ),
            (
                "rate limited with Retry-After: paused, and the call did not act",
                transient(RetryReason::RateLimited, Some(2_000)),
                situation(0, 0, None),
                again(2_000, retry(RetryReason::RateLimited), 1, 0, None, kept.clone(), false),
                "retry",
                Some(NOW + 2_000),
            ),
            (
                "rate limited without Retry-After: back-off alone, no pause",
                transient(RetryReason::RateLimited, None),
                situation(0, 0, None),
                again(50, retry(RetryReason::RateLimited), 1, 0, None, kept.clone(), false),
                "retry",
                None,
            ),
            (
                "unauthorized: retried, the call did not act",
                transient(RetryReason::Unauthorized, None),
                situation(0, 0, None),
                again(50, retry(RetryReason::Unauthorized), 1, 0, None, kept.clone(), false),
                "retry",
                None,
            ),
            (
                "bad response: retried, the call may have acted",
                transient(RetryReason::BadResponse, None),
                situation(0, 0, None),
                again(50, retry(RetryReason::BadResponse), 1, 0, None, kept.clone(), true),
                "retry",
                None,
            ),
            (
                "the last attempt fails transiently: exhausted (a pause is still shared)",
                transient(RetryReason::ServerError, Some(1_000)),
                situation(4, 0, None),
                fail(ErrorKind::Exhausted, Some(503), "busy (gave up after 5 attempts)"),
                "exhausted",
                Some(NOW + 1_000),
            ),
            (
                "rejected: fails at once with its status",
                Err(StepError::rejected(Some(422), "taken")),
                situation(0, 0, None),
                fail(ErrorKind::Rejected, Some(422), "taken"),
                "rejected",
                None,
            ),
            (
                "the provider's job failed",
                Err(StepError::job_failed("disk full")),
                situation(0, 3, Some(NOW + 1)),
                fail(ErrorKind::JobFailed, None, "disk full"),
                "job_failed",
                None,
            ),
        ];
        for (why, result, s, expect, label, pause) in cases {
            assert_eq!(shared_pause(&result, s.now_ms), pause, "{why}: the pause");
            let got = classify(result, s);
            assert_eq!(got, expect, "{why}");
            assert_eq!(got.label(), label, "{why}: the label");
        }
    }

    #[test]
    fn the_jitter_passed_in_spans_the_whole_back_off_range() {
        let delay = |jitter: f64| {
            let s = Situation {
                jitter,
                ..situation(0, 0, None)
            };
            match classify(transient(RetryReason::Timeout, None), s) {
                Decision::Again { delay, .. } => delay,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(delay(0.0), Duration::ZERO);
        assert_eq!(delay(1.0), Duration::from_millis(100));
    }
}
