//! Knobs shared by every emulated API: added latency, injected faults, and a
//! count of calls per endpoint so tests can assert "exactly one create".
//!
//! Driven in-process through [`Knobs`] or over HTTP at `/_sandbox/...`:
//! `POST /_sandbox/faults` (a [`FaultRule`] as JSON), `GET /_sandbox/calls`,
//! `POST /_sandbox/latency` (`{"ms": 20}`), `POST /_sandbox/reset`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// What an injected fault does instead of (or before) the real handler.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer this status with a small JSON error body.
    Status { status: u16 },
    /// 429 with `Retry-After: secs`.
    RateLimited { retry_after_s: u64 },
    /// Wait this long, then answer normally (longer than the client timeout = a hang).
    Hang { ms: u64 },
    /// 200 with an HTML page.
    Html200,
    /// A status with an empty body.
    Empty { status: u16 },
    /// 200 with a body of this many bytes, announced in `Content-Length`
    /// (streamed: the sandbox never holds it whole).
    Huge { bytes: usize },
    /// As [`Fault::Huge`], without `Content-Length` (chunked): the client only
    /// learns the size by reading.
    HugeChunked { bytes: usize },
    /// 200 whose body never ends, trickling a few bytes every 10 ms.
    Endless,
    /// 200 whose body never ends, as fast as the client reads it.
    EndlessFast,
    /// 200 with a JSON body of the test's choosing instead of the real handler's
    /// (say, one missing the field the next step needs).
    Json200 { body: serde_json::Value },
    /// Starts a 200 with part of a JSON body, then breaks the connection.
    ResetMidBody,
    /// 302 to the same path, forever.
    RedirectLoop,
    /// Run the real handler, then answer 503 anyway (the create happened: the
    /// "call succeeded, answer lost" case).
    AfterSuccess { status: u16 },
}

/// Applies `fault` to the next `times` calls matching `method` and `path`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FaultRule {
    /// `POST`, `GET`...; any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// A substring of the request path (not the template): `/user`, `/tenant`.
    pub path_contains: String,
    pub fault: Fault,
    pub times: u32,
}

#[derive(Default)]
struct KnobState {
    latency: Duration,
    rules: Vec<FaultRule>,
    /// "POST /reseller/tenant/{code_name}/user" -> count.
    calls: BTreeMap<String, u64>,
}

/// One emulated API's knobs; cheap to clone.
#[derive(Clone, Default)]
pub struct Knobs {
    inner: Arc<Mutex<KnobState>>,
}

impl Knobs {
    pub fn set_latency(&self, latency: Duration) {
        self.inner.lock().unwrap().latency = latency;
    }
    pub fn inject(&self, rule: FaultRule) {
        self.inner.lock().unwrap().rules.push(rule);
    }
    /// Calls of `"METHOD /route/{template}"`, as axum matched it.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .calls
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }
    pub fn all_calls(&self) -> BTreeMap<String, u64> {
        self.inner.lock().unwrap().calls.clone()
    }
    pub fn reset(&self) {
        let mut s = self.inner.lock().unwrap();
        s.rules.clear();
        s.calls.clear();
        s.latency = Duration::ZERO;
    }

    fn take_fault(&self, method: &Method, path: &str) -> (Duration, Option<Fault>) {
        let mut s = self.inner.lock().unwrap();
        let latency = s.latency;
        let found = s.rules.iter_mut().find(|r| {
            r.times > 0
                && path.contains(&r.path_contains)
                && r.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
        });
        let fault = found.map(|r| {
            r.times -= 1;
            r.fault.clone()
        });
        s.rules.retain(|r| r.times > 0);
        (latency, fault)
    }

    fn count(&self, endpoint: String) {
        *self
            .inner
            .lock()
            .unwrap()
            .calls
            .entry(endpoint)
            .or_default() += 1;
    }
}

/// Middleware: counts the call, sleeps the latency, applies a matching fault.
/// Install with `Router::route_layer` so the matched route is known.
pub async fn apply(State(knobs): State<Knobs>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    knobs.count(format!("{method} {template}"));
    let (latency, fault) = knobs.take_fault(&method, &path);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let Some(fault) = fault else {
        return next.run(request).await;
    };
    match fault {
        Fault::Status { status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (
                status,
                Json(serde_json::json!({"message": "injected fault"})),
            )
                .into_response()
        }
        Fault::RateLimited { retry_after_s } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_s.to_string())],
            Json(serde_json::json!({"message": "slow down"})),
        )
            .into_response(),
        Fault::Hang { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(request).await
        }
        Fault::Html200 => (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html><body>Scheduled maintenance</body></html>",
        )
            .into_response(),
        Fault::Empty { status } => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::BAD_REQUEST)
            .into_response(),
        Fault::Huge { bytes } => (
            StatusCode::OK,
            [
                ("content-type", "application/json".to_string()),
                ("content-length", bytes.to_string()),
            ],
            Body::from_stream(spaces(bytes)),
        )
            .into_response(),
        Fault::HugeChunked { bytes } => (
            StatusCode::OK,
            [("content-type", "application/json")],
            Body::from_stream(spaces(bytes)),
        )
            .into_response(),
        Fault::Endless => {
            let stream = futures::stream::unfold((), |_| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"a\":[1,2,3],")),
                    (),
                ))
            });
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Fault::EndlessFast => {
            let chunk = bytes::Bytes::from_static(&SPACES);
            let stream =
                futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Fault::Json200 { body } => (StatusCode::OK, Json(body)).into_response(),
        Fault::ResetMidBody => {
            // The first chunk goes out (status, headers, a partial body); then
            // the body fails and hyper aborts the connection mid-response.
            let stream = futures::stream::iter([
                Ok(bytes::Bytes::from_static(b"{\"codeName\":\"part")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                )),
            ])
            .then(|item| async move {
                // Let the first chunk reach the client before the failure.
                if item.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                item
            });
            (
                StatusCode::OK,
                [
                    ("content-type", "application/json"),
                    ("content-length", "4096"),
                ],
                Body::from_stream(stream),
            )
                .into_response()
        }
        Fault::RedirectLoop => (StatusCode::FOUND, [("location", path)]).into_response(),
        Fault::AfterSuccess { status } => {
            let _ = next.run(request).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (
                status,
                Json(serde_json::json!({"message": "injected fault after success"})),
            )
                .into_response()
        }
    }
}

static SPACES: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// `bytes` spaces in 64 KiB chunks, never allocated whole.
fn spaces(bytes: usize) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let chunk = bytes::Bytes::from_static(&SPACES);
    let (full, rest) = (bytes / chunk.len(), bytes % chunk.len());
    let tail = chunk.slice(..rest);
    futures::stream::iter(
        std::iter::repeat_n(chunk, full)
            .chain((rest > 0).then_some(tail))
            .map(Ok),
    )
}

#[derive(Deserialize)]
struct LatencyBody {
    ms: u64,
}

/// `/_sandbox/...` control routes, merged into each emulated API's router.
pub fn control_routes(knobs: Knobs) -> Router {
    Router::new()
        .route(
            "/_sandbox/faults",
            post(
                |State(k): State<Knobs>, Json(rule): Json<FaultRule>| async move {
                    k.inject(rule);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_sandbox/calls",
            get(|State(k): State<Knobs>| async move { Json(k.all_calls()) }),
        )
        .route(
            "/_sandbox/latency",
            post(
                |State(k): State<Knobs>, Json(b): Json<LatencyBody>| async move {
                    k.set_latency(Duration::from_millis(b.ms));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/_sandbox/reset",
            post(|State(k): State<Knobs>| async move {
                k.reset();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(knobs)
}
