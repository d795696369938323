//! Picking our connection test out of the dashboard host's job list: the job
//! answer's shape ([`Job`], with its tolerant [`Workload`] and [`JobKind`]
//! fields) and the rules of [`pick_job`] (open points 1–4 of the module doc),
//! so that another connection's job is never taken for ours.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use super::answers::{object_as, opt_id, shape, Id, Status};

/// `workload`: an object, or the same object JSON-encoded in a string; its
/// connection as `connectionId` (the seed's form field) or `connection_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Workload {
    pub(super) connection: Option<Id>,
}

impl Workload {
    fn read(v: &Value) -> Result<Workload, String> {
        match v {
            Value::Null => Ok(Workload::default()),
            // PHP writes an empty associative array as [].
            Value::Array(a) if a.is_empty() => Ok(Workload::default()),
            Value::Object(o) => {
                let id = ["connectionId", "connection_id", "connectionID"]
                    .iter()
                    .find_map(|k| o.get(*k).filter(|v| !v.is_null()));
                match id {
                    None => Ok(Workload::default()),
                    Some(v) => Ok(Workload {
                        connection: Id::read(v).map_err(|e| {
                            e.replace("with an id", "whose workload has a connection id")
                        })?,
                    }),
                }
            }
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(inner @ Value::Object(_)) => Workload::read(&inner),
                _ => Err("whose workload is a string that is not a JSON object".into()),
            },
            other => Err(format!("whose workload is {}", shape(other))),
        }
    }
}

impl<'de> Deserialize<'de> for Workload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Workload::read(&v).map_err(de::Error::custom)
    }
}

/// The dashboard host's job type for a connection test.
pub(super) const CONNECTION_TEST: i64 = 27;

/// `type`: `{"name": "Connection Test", "id": 27}` as the seed shows, or the
/// id or the name alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct JobKind {
    id: Option<Id>,
    name: Option<String>,
}

impl JobKind {
    fn read(v: &Value) -> Result<JobKind, String> {
        let named = |s: &str| match Id::parse(s) {
            Some(Id::Num(n)) => JobKind {
                id: Some(Id::Num(n)),
                name: None,
            },
            _ => JobKind {
                id: None,
                name: Some(s.trim().to_string()),
            },
        };
        match v {
            Value::Null => Ok(JobKind::default()),
            Value::Number(_) => Ok(JobKind {
                id: Id::read(v).map_err(|_| "whose type is a fractional number")?,
                name: None,
            }),
            Value::String(s) => Ok(named(s)),
            Value::Object(o) => Ok(JobKind {
                id: match o.get("id") {
                    Some(id) => {
                        Id::read(id).map_err(|e| e.replace("with an id", "whose type has an id"))?
                    }
                    None => None,
                },
                name: o
                    .get("name")
                    .and_then(Value::as_str)
                    .map(|s| s.trim().to_string()),
            }),
            other => Err(format!("whose type is {}", shape(other))),
        }
    }

    /// A connection test, or a job that does not say (the GET asked for type 27).
    pub(super) fn is_connection_test(&self) -> bool {
        match (&self.id, &self.name) {
            (Some(id), _) => *id == Id::Num(CONNECTION_TEST),
            (None, Some(name)) => name.eq_ignore_ascii_case("connection test"),
            (None, None) => true,
        }
    }
}

impl<'de> Deserialize<'de> for JobKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        JobKind::read(&v).map_err(de::Error::custom)
    }
}

/// A connection-test job on the dashboard host.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Job {
    #[serde(default, deserialize_with = "opt_id")]
    pub(super) id: Option<Id>,
    pub(super) status: Status,
    #[serde(default)]
    pub(super) workload: Workload,
    #[serde(default, rename = "type")]
    pub(super) kind: JobKind,
    /// When the job was made, if the answer says (ordering only; never compared
    /// with our own clock).
    #[serde(
        default,
        alias = "created",
        alias = "createdAt",
        alias = "create_at",
        alias = "queued_at"
    )]
    created_at: Option<Value>,
    /// The provider's reason when it failed.
    #[serde(default)]
    pub(super) error: Option<Value>,
}

impl Job {
    pub(super) fn read(v: &Value) -> Result<Job, String> {
        object_as(v)
    }

    /// Newer sorts higher: by numeric id, then by the creation time the answer gives.
    fn age_key(&self) -> (Option<i64>, Option<String>) {
        let created = match &self.created_at {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(format!("{:>20}", n)),
            _ => None,
        };
        (self.id.as_ref().and_then(Id::number), created)
    }
}

/// What the job list says about our connection test.
#[derive(Debug)]
pub(super) enum Pick {
    Ours(Job),
    /// Not listed (yet), or listed in a way that cannot be told apart: wait.
    /// The reason is short (at most 40 characters reach the logs).
    NotYet(String),
}

/// What is known of our connection test when the list is read.
#[derive(Debug, Default)]
pub(super) struct OurTest<'a> {
    /// The connection we tested.
    pub(super) connection: Option<&'a Id>,
    /// The id the job POST answered (the seed's answer has `"id": null`).
    pub(super) job: Option<&'a Id>,
    /// Job ids listed just before our POST; `None` when not known.
    pub(super) before: Option<&'a [Id]>,
}

pub(super) const EXPECTED_JOBS: &str =
    "a job object or a list of jobs with status.name (bare, or under jobs/data/items/results)";

/// Finds our connection test in the entries of a job list. Never takes another
/// connection's job for ours:
/// 1. a job whose id is the one the POST answered, when it answered one;
/// 2. else the newest job whose workload names our connection;
/// 3. else, among jobs that name no connection, the only one not listed
///    before our POST (several: wait, they cannot be told apart).
///
/// Entries of another type or naming another connection are never ours.
/// Unreadable entries are skipped unless nothing readable is ours, then the
/// answer is an error naming what came.
pub(super) fn pick_job(entries: &[Value], ours: &OurTest<'_>) -> Result<Pick, String> {
    let mut jobs = Vec::new();
    let mut unreadable = None;
    for (i, entry) in entries.iter().enumerate() {
        match Job::read(entry) {
            Ok(job) if job.kind.is_connection_test() => jobs.push(job),
            Ok(_) => {}
            Err(why) if unreadable.is_none() => unreadable = Some((i, why)),
            Err(_) => {}
        }
    }
    let found = choose(jobs, ours);
    match (found, unreadable) {
        (Pick::NotYet(_), Some((i, why))) => Err(if entries.len() == 1 {
            why
        } else {
            format!("a list of {} whose entry {} is {why}", entries.len(), i + 1)
        }),
        (found, _) => Ok(found),
    }
}

fn choose(jobs: Vec<Job>, ours: &OurTest<'_>) -> Pick {
    if let Some(id) = ours.job {
        // Ids are unique: the POST's id settles it, unless the list gives none.
        if jobs.iter().any(|j| j.id.is_some()) {
            return match jobs.into_iter().find(|j| j.id.as_ref() == Some(id)) {
                Some(job) => Pick::Ours(job),
                None => Pick::NotYet(format!("job {id} not listed yet")),
            };
        }
    }
    let listed_before =
        |j: &Job| matches!((ours.before, &j.id), (Some(before), Some(id)) if before.contains(id));
    let (named, unnamed): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| j.workload.connection.is_some());
    let of_ours: Vec<Job> = named
        .into_iter()
        .filter(|j| ours.connection.is_some() && j.workload.connection.as_ref() == ours.connection)
        .collect();
    if !of_ours.is_empty() {
        // Tests of our connection listed before our POST are older than ours.
        let new: Vec<Job> = of_ours
            .iter()
            .filter(|j| !listed_before(j))
            .cloned()
            .collect();
        if new.is_empty() {
            return Pick::NotYet("only earlier tests of ours listed".into());
        }
        return newest(new);
    }
    // No job names our connection. Jobs naming no connection are ours only if
    // they appeared after our POST, and only if there is one.
    if ours.before.is_none() {
        return Pick::NotYet("no job names our connection".into());
    }
    let new: Vec<Job> = unnamed
        .into_iter()
        .filter(|j| j.id.is_some() && !listed_before(j))
        .collect();
    match new.len() {
        0 => Pick::NotYet("no job names our connection".into()),
        1 => Pick::Ours(new.into_iter().next().expect("one")),
        n => Pick::NotYet(format!("{n} new jobs name no connection")),
    }
}

/// The newest of several tests of our connection; when nothing orders them
/// and their statuses differ, wait.
fn newest(mut jobs: Vec<Job>) -> Pick {
    if jobs.len() > 1 && jobs.iter().all(|j| j.age_key() == (None, None)) {
        let phase = jobs[0].status.phase();
        if jobs.iter().any(|j| j.status.phase() != phase) {
            return Pick::NotYet("several tests of ours, none orderable".into());
        }
    }
    jobs.sort_by_key(Job::age_key);
    Pick::Ours(jobs.pop().expect("at least one"))
}
