//! The readings: how the emulated API answers where the seed leaves an answer
//! open, one knob per open point, and how each knob shapes an answer.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::stamp;

/// How the emulated API answers where the seed leaves an answer open: one knob
/// per open point of the provider module's inventory (`providers::magento_bi`).
/// Every default is the seed's own example (or, where the seed shows nothing,
/// what this sandbox always answered).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Readings {
    /// `GET /v2/client/{client_id}/job/type/27` (points 1 and 2).
    pub job_list: JobList,
    /// A job's `status`: `{"name": .., "id": ..}` (seed) or the bare name (point 5).
    pub job_status: JobStatusForm,
    /// The letter case of every status word: jobs, signups, autodash (points 5, 8, 17).
    pub status_case: StatusCase,
    /// Client, user, connection and job ids (and the token's ids) (points 9, 11).
    pub ids: Ids,
    /// Whether listed jobs say which connection they test (point 3).
    pub job_workload: JobWorkload,
    /// The job POST's `id`: `null` as in the seed, or the new job's id (point 7).
    pub job_id_on_create: JobIdOnCreate,
    /// `GET .../connections/input-connections` (point 13).
    pub connection_list: ConnectionList,
    /// `properties.established` (point 14).
    pub established: EstablishedForm,
    /// A value not known (yet) written as `null` (seed) or left out (point 15).
    pub nulls: Nulls,
    /// Unknown fields added to every answer, at the top and inside every object (point 16).
    pub extra_fields: bool,
}

/// The job list's form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobList {
    /// A bare list, newest first.
    #[default]
    List,
    /// A bare list, oldest first.
    OldestFirst,
    /// The latest job alone, as one object (404 when there is none).
    Object,
    /// `{"jobs": [...], "total": n}`, newest first.
    Wrapped,
    /// `{"data": [...], "meta": {"count": n}}`, newest first.
    WrappedData,
}

/// A job's `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusForm {
    /// `{"name": "Completed", "id": 3}`, as the seed's job POST answer shows.
    #[default]
    Object,
    /// `"Completed"`.
    String,
}

/// How status words are spelt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCase {
    /// As the seed spells them: `Queued`, `Completed` for jobs; `completed` for signups and autodash.
    #[default]
    Seed,
    /// `Completed` everywhere.
    Title,
    /// `completed` everywhere.
    Lower,
    /// `COMPLETED` everywhere.
    Upper,
}

/// Ids in answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ids {
    /// JSON numbers, as in the seed.
    #[default]
    Number,
    /// Numeric strings: `"14"`.
    String,
}

/// Listed jobs' `workload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobWorkload {
    /// `{"connectionId": 14, "syncAndSample": 1}`, echoing the POST's form.
    #[default]
    Present,
    /// No `workload`: a job does not say which connection it tests.
    Absent,
}

/// The job POST's `id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobIdOnCreate {
    /// `"id": null`, as in the seed.
    #[default]
    Null,
    /// The new job's id, as later listed.
    Id,
}

/// The connection list's form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionList {
    /// A bare list, as in the seed.
    #[default]
    List,
    /// `{"connections": [...], "total": n}`.
    Wrapped,
}

/// `properties.established`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstablishedForm {
    /// `"2018-04-10 10:03:20"` once established, `null` before (seed).
    #[default]
    Timestamp,
    /// `true` / `false`.
    Bool,
    /// Unix seconds once established, `null` before.
    Epoch,
}

/// A value not known (yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nulls {
    /// `null`, as in the seed.
    #[default]
    Null,
    /// The key left out.
    Absent,
}

/// The readings knobs, for `onboarding-worker sandbox --help`
/// (see [`crate::sandbox::readings_help`]).
pub const READINGS_HELP: &str = "\
Magento BI: [sandbox.magento_bi], ONBOARDING__SANDBOX__MAGENTO_BI__<KEY>, or at run time
POST /_sandbox/readings on the Magento BI API port (not the dashboard's).
  job_list            list (default, newest first) | oldest_first | object (the latest job alone)
                      | wrapped ({\"jobs\": [...]}) | wrapped_data ({\"data\": [...]})
  job_status          object (default, {\"name\": \"Completed\", \"id\": 3}) | string (\"Completed\")
  status_case         seed (default: jobs Completed, signups and autodash completed)
                      | title | lower | upper
  ids                 number (default) | string (\"14\"): client, user, connection and job ids
  job_workload        present (default, {\"connectionId\": 14, ...}) | absent
  job_id_on_create    null (default, as the seed's job POST answer) | id
  connection_list     list (default) | wrapped ({\"connections\": [...]})
  established         timestamp (default) | bool | epoch
  nulls               null (default) | absent (unknown values left out)
  extra_fields        false (default) | true (unknown fields in every answer and object)";

impl Readings {
    pub(super) fn id(&self, id: i64) -> Value {
        match self.ids {
            Ids::Number => json!(id),
            Ids::String => json!(id.to_string()),
        }
    }

    /// `seed_word` (the seed's spelling) in the letter case in force.
    pub(super) fn word(&self, seed_word: &str) -> String {
        match self.status_case {
            StatusCase::Seed => seed_word.to_string(),
            StatusCase::Lower => seed_word.to_lowercase(),
            StatusCase::Upper => seed_word.to_uppercase(),
            StatusCase::Title => {
                let lower = seed_word.to_lowercase();
                let mut chars = lower.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
        }
    }

    /// A job's `status`.
    pub(super) fn job_status(&self, id: i64, name: &str) -> Value {
        match self.job_status {
            JobStatusForm::Object => json!({ "name": self.word(name), "id": id }),
            JobStatusForm::String => json!(self.word(name)),
        }
    }

    /// `properties.established` of a connection established at `at` (or not yet).
    pub(super) fn established(&self, at: Option<OffsetDateTime>) -> Value {
        match (self.established, at) {
            (EstablishedForm::Timestamp, Some(t)) => json!(stamp(t)),
            (EstablishedForm::Epoch, Some(t)) => json!(t.unix_timestamp()),
            (EstablishedForm::Bool, at) => json!(at.is_some()),
            (_, None) => Value::Null,
        }
    }

    /// An answer as the readings in force write it: nulls left out or not,
    /// unknown fields added or not.
    fn finish(&self, mut v: Value) -> Value {
        fn walk(v: &mut Value, r: &Readings) {
            match v {
                Value::Object(map) => {
                    if r.nulls == Nulls::Absent {
                        map.retain(|_, v| !v.is_null());
                    }
                    for child in map.values_mut() {
                        walk(child, r);
                    }
                    if r.extra_fields {
                        map.insert(
                            "x_sandbox".into(),
                            json!({ "note": "a field the seed does not show", "revision": 2,
                                    "related": [{ "kind": "unknown", "seen": true }] }),
                        );
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(|i| walk(i, r)),
                _ => {}
            }
        }
        walk(&mut v, self);
        v
    }

    pub(super) fn reply(&self, v: Value) -> Response {
        Json(self.finish(v)).into_response()
    }
}
