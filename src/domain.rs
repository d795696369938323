//! The closed vocabularies of the contract: providers, operations, event kinds
//! and error kinds. No serde, no I/O: wire formats convert to and from these.

use std::fmt;

/// A provider the worker knows (CONTRACT §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Onboard,
    /// Sharespine only: a fresh login URL for a returning customer.
    LoginUrl,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Onboard => "onboard",
            Operation::LoginUrl => "login_url",
        }
    }

    pub fn parse(s: &str) -> Option<Operation> {
        match s {
            "onboard" => Some(Operation::Onboard),
            "login_url" => Some(Operation::LoginUrl),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error.kind` of a `failed` event (CONTRACT §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidRequest,
    Rejected,
    Exhausted,
    TimedOut,
    JobFailed,
}

impl ErrorKind {
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
        [
            ErrorKind::InvalidRequest,
            ErrorKind::Rejected,
            ErrorKind::Exhausted,
            ErrorKind::TimedOut,
            ErrorKind::JobFailed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The event names of CONTRACT §5; also the last part of their routing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Accepted,
    StepCompleted,
    Completed,
    Failed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::StepCompleted => "step_completed",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
        }
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
}
