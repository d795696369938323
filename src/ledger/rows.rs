//! The ledger's one data model, shared by both backends: which columns a
//! request's record is read from, and how a row becomes a [`RequestRecord`].
//!
//! Two tables, the same columns in both backends:
//! - `requests`: one row per request: `request_id`, `provider`, `operation`,
//!   `body`, `status`, `cursor`, the lease (`lease_owner`, `lease_until`,
//!   `lease_seq`, `lease_step`), where it stands (`current_step`,
//!   `current_index`, `waiting_until`), `final_event`, `accepted_at`,
//!   `updated_at`.
//! - `steps`: one row per recorded step: `request_id`, `step_key`, the step's
//!   `outputs` and `secrets` (JSON objects as text), `completed_at` (ms, the
//!   recording worker's clock) and `recorded`, a number that grows with every
//!   step recorded (SQLite: the rowid; PostgreSQL: an identity column, taken
//!   under the request's row lock), so a request's steps read back in the
//!   order they were recorded.
//!
//! A request's outputs and private values are those of its steps merged in
//! that order (a later step's key wins); nothing is stored twice.

use serde_json::{Map, Value};

use super::{LedgerError, RequestRecord, Status};
use crate::domain::{Operation, ProviderId};

/// The `requests` columns a record is read from, as selected by
/// [`RequestRow`] (with the backend's `steps` expression after them).
pub(super) const REQUEST_COLUMNS: &str = "request_id, provider, operation, body, status, cursor,
    current_step, current_index, waiting_until, final_event, accepted_at, updated_at";

/// How `record_step` notes where a request stands after its step, in both
/// backends, given `v(step, step_index, waiting)`: while the request runs,
/// the step and index named (kept when none is) and the wait as given; a
/// finished request keeps its end.
pub(super) const RECORD_PROGRESS: &str =
    "current_step = CASE WHEN status = 'running' THEN COALESCE(v.step, current_step) ELSE current_step END,
     current_index = CASE WHEN status = 'running' THEN COALESCE(v.step_index, current_index) ELSE current_index END,
     waiting_until = CASE WHEN status = 'running' THEN v.waiting ELSE waiting_until END";

/// A request's row with its steps, as both backends select it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RequestRow {
    pub(super) request_id: String,
    provider: String,
    operation: String,
    body: Vec<u8>,
    status: String,
    cursor: i64,
    current_step: Option<String>,
    current_index: Option<i64>,
    waiting_until: Option<i64>,
    final_event: Option<String>,
    accepted_at: i64,
    updated_at: i64,
    /// The request's steps in the order recorded, as a JSON array of
    /// `[step_key, outputs, secrets]` (each of the last two a JSON object's
    /// text): one statement, so one snapshot, reads the whole record.
    steps: String,
}

impl TryFrom<RequestRow> for RequestRecord {
    type Error = LedgerError;

    fn try_from(row: RequestRow) -> Result<Self, LedgerError> {
        let request_id = row.request_id;
        let corrupt = |message: String| LedgerError::Corrupt {
            request_id: request_id.clone(),
            message,
        };
        let status = Status::parse(&row.status)
            .ok_or_else(|| corrupt(format!("status {:?}", row.status)))?;
        let provider = ProviderId::parse(&row.provider)
            .ok_or_else(|| corrupt(format!("provider {:?}", row.provider)))?;
        let operation = Operation::parse(&row.operation)
            .ok_or_else(|| corrupt(format!("operation {:?}", row.operation)))?;
        let steps: Vec<(String, String, String)> =
            serde_json::from_str(&row.steps).map_err(|e| corrupt(format!("steps: {e}")))?;
        let mut outputs = Map::new();
        let mut secrets = Map::new();
        let mut done_steps = Vec::with_capacity(steps.len());
        for (key, step_outputs, step_secrets) in steps {
            outputs.extend(object(&step_outputs).map_err(|e| corrupt(format!("{key}: {e}")))?);
            secrets.extend(object(&step_secrets).map_err(|e| corrupt(format!("{key}: {e}")))?);
            done_steps.push(key);
        }
        Ok(RequestRecord {
            provider,
            operation,
            body: row.body,
            status,
            cursor: row.cursor,
            outputs,
            secrets,
            done_steps,
            current_step: row.current_step,
            current_index: row.current_index,
            waiting_until_ms: row.waiting_until,
            final_event: row.final_event,
            accepted_at_ms: row.accepted_at,
            updated_at_ms: row.updated_at,
            request_id,
        })
    }
}

fn object(text: &str) -> Result<Map<String, Value>, serde_json::Error> {
    serde_json::from_str(text)
}

/// A JSON object's text, as `steps.outputs` and `.secrets` hold it.
pub(super) fn object_text(map: &Map<String, Value>) -> String {
    Value::Object(map.clone()).to_string()
}
