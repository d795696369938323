//! The closed vocabularies of the contract: providers, operations, event kinds
//! and error kinds. No I/O. Each serialises (serde) as its contract string,
//! `as_str`, so wire formats hold these types, never strings; each has `ALL`,
//! from which metric label sets are generated.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A provider the worker knows (CONTRACT §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderId {
    MagentoBi,
    Computestacks,
    Sharespine,
}

impl ProviderId {
    pub const ALL: [ProviderId; 3] = [
        ProviderId::MagentoBi,
        ProviderId::Computestacks,
        ProviderId::Sharespine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::MagentoBi => "magento_bi",
            ProviderId::Computestacks => "computestacks",
            ProviderId::Sharespine => "sharespine",
        }
    }

    pub fn parse(s: &str) -> Option<ProviderId> {
        ProviderId::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks of its provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Onboard,
    /// Sharespine only: a fresh login URL for a returning customer.
    LoginUrl,
}

impl Operation {
    pub const ALL: [Operation; 2] = [Operation::Onboard, Operation::LoginUrl];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Onboard => "onboard",
            Operation::LoginUrl => "login_url",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error.kind` of a `failed` event (CONTRACT §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequest,
    Rejected,
    Exhausted,
    TimedOut,
    JobFailed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::InvalidRequest,
        ErrorKind::Rejected,
        ErrorKind::Exhausted,
        ErrorKind::TimedOut,
        ErrorKind::JobFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Exhausted => "exhausted",
            ErrorKind::TimedOut => "timed_out",
            ErrorKind::JobFailed => "job_failed",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event names of CONTRACT §5; also the last part of their routing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Accepted,
    StepCompleted,
    Completed,
    Failed,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Accepted,
        EventKind::StepCompleted,
        EventKind::Completed,
        EventKind::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::StepCompleted => "step_completed",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a step is tried again; a bounded set, used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// Could not connect, or the connection broke.
    Connection,
    /// No complete answer within the call timeout.
    Timeout,
    /// 408, 425 or 5xx.
    ServerError,
    /// 429.
    RateLimited,
    /// A 2xx whose body could not be read or used (too large, not the expected JSON).
    BadResponse,
    /// The provider refused our credentials; a fresh token may help (Magento BI).
    Unauthorized,
    /// Another copy of this step holds its lease.
    Leased,
    /// The broker refused (nacked) a publish of the step's outcome (an event
    /// to a full subscriber queue): the onboarding is held back.
    Refused,
}

impl RetryReason {
    pub const ALL: [RetryReason; 8] = [
        RetryReason::Connection,
        RetryReason::Timeout,
        RetryReason::ServerError,
        RetryReason::RateLimited,
        RetryReason::BadResponse,
        RetryReason::Unauthorized,
        RetryReason::Leased,
        RetryReason::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connection => "connection",
            RetryReason::Timeout => "timeout",
            RetryReason::ServerError => "server_error",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::BadResponse => "bad_response",
            RetryReason::Unauthorized => "unauthorized",
            RetryReason::Leased => "leased",
            RetryReason::Refused => "refused",
        }
    }
}

/// Checks CONTRACT §4's `request_id` rule: 1 to 128 of `A-Z a-z 0-9 . _ : -`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_rules_follow_the_contract() {
        for (id, ok, why) in [
            ("billing-evt-000123", true, "the contract's example"),
            ("a", true, "one character"),
            ("A.b_c:d-9", true, "every allowed punctuation"),
            ("", false, "empty"),
            ("has space", false, "space"),
            ("slash/inside", false, "slash"),
            ("ünïcode", false, "non-ASCII letters"),
            ("tab\tinside", false, "control character"),
        ] {
            assert_eq!(valid_request_id(id), ok, "{why}: {id:?}");
        }
        assert!(valid_request_id(&"x".repeat(128)), "128 characters");
        assert!(!valid_request_id(&"x".repeat(129)), "129 characters");
    }

    #[test]
    fn names_round_trip() {
        for p in ProviderId::ALL {
            assert_eq!(ProviderId::parse(p.as_str()), Some(p));
        }
        assert_eq!(Operation::parse("login_url"), Some(Operation::LoginUrl));
        assert_eq!(ErrorKind::parse("timed_out"), Some(ErrorKind::TimedOut));
        assert_eq!(ProviderId::parse("Sharespine"), None);
    }

    /// Serde writes and reads each value as exactly its contract string
    /// (`as_str`, quoted); anything else is refused, not mapped to a default.
    fn check_serde<T>(all: &[T], as_str: fn(&T) -> &'static str, strangers: &[&str])
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        for v in all {
            let wire = format!("\"{}\"", as_str(v));
            assert_eq!(serde_json::to_string(v).unwrap(), wire, "{v:?} serialises");
            assert_eq!(
                &serde_json::from_str::<T>(&wire).unwrap(),
                v,
                "{wire} reads"
            );
        }
        for s in strangers {
            let wire = format!("\"{s}\"");
            assert!(serde_json::from_str::<T>(&wire).is_err(), "{wire} refused");
        }
    }

    #[test]
    fn each_vocabulary_serialises_as_the_contract_strings() {
        check_serde(
            &ProviderId::ALL,
            |p| p.as_str(),
            &["Sharespine", "magentobi", "acme", ""],
        );
        check_serde(
            &Operation::ALL,
            |o| o.as_str(),
            &["Onboard", "loginUrl", "delete"],
        );
        check_serde(
            &ErrorKind::ALL,
            |k| k.as_str(),
            &["InvalidRequest", "timeout", "failed"],
        );
        check_serde(&EventKind::ALL, |e| e.as_str(), &["StepCompleted", "done"]);
        let strings = |v: Vec<&str>| v.join(" ");
        assert_eq!(
            strings(ProviderId::ALL.iter().map(|p| p.as_str()).collect()),
            "magento_bi computestacks sharespine"
        );
        assert_eq!(
            strings(Operation::ALL.iter().map(|o| o.as_str()).collect()),
            "onboard login_url"
        );
        assert_eq!(
            strings(ErrorKind::ALL.iter().map(|k| k.as_str()).collect()),
            "invalid_request rejected exhausted timed_out job_failed"
        );
        assert_eq!(
            strings(EventKind::ALL.iter().map(|e| e.as_str()).collect()),
            "accepted step_completed completed failed"
        );
        assert_eq!(
            strings(RetryReason::ALL.iter().map(|r| r.as_str()).collect()),
            "connection timeout server_error rate_limited bad_response unauthorized leased refused"
        );
    }
}
