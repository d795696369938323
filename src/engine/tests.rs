//! The engine against an in-memory broker ([`FakeTransport`]: every publish
//! recorded in order, chosen ones refused as a nack), a temporary SQLite
//! ledger and a scripted provider: what a handler publishes, in which order,
//! before it returns `Ok`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::step::{
    PollPolicy, Provider, Providers, RetryPolicy, StepContext, StepDone, StepError, StepKey,
    StepOutcome,
};
use super::transport::{DeadReason, HeaderId, Incoming, OriginalProps, Transport, TransportError};
use super::wire::{Event, StepMessage};
use super::{Engine, EngineSettings};
use crate::domain::{ErrorKind, EventKind, Operation, ProviderId, RetryReason};
use crate::ledger::{Ledger, Status};
use crate::metrics::Metrics;

/// One publish, as the broker saw it.
#[derive(Debug, Clone, PartialEq)]
enum Published {
    Step {
        provider: ProviderId,
        message: StepMessage,
        delay: Duration,
    },
    Event {
        routing_key: String,
        event: Event,
    },
    Pause {
        provider: ProviderId,
    },
    Dead {
        body: Vec<u8>,
        reason: DeadReason,
    },
}

impl Published {
    /// A short name for order checks: `step 1@2` (plan index @ seq),
    /// `sharespine.accepted`, `dead rejected`, `pause`.
    fn name(&self) -> String {
        match self {
            Published::Step { message, .. } => format!("step {}@{}", message.step, message.seq),
            Published::Event { routing_key, event } => match &event.step {
                Some(step) => format!("{routing_key} {step}"),
                None => routing_key.clone(),
            },
            Published::Pause { .. } => "pause".into(),
            Published::Dead { reason, .. } => format!("dead {}", reason.kind),
        }
    }
}

/// Decides whether the broker refuses (nacks) a publish.
type Refuse = Box<dyn Fn(&Published) -> bool + Send + Sync>;

/// An in-memory broker: records every publish it confirms, in order, and
/// refuses those `refuse` picks (each refusal recorded too).
#[derive(Default)]
struct FakeTransport {
    confirmed: Mutex<Vec<Published>>,
    refused: Mutex<Vec<Published>>,
    refuse: Mutex<Option<Refuse>>,
}

impl FakeTransport {
    fn refuse(&self, which: impl Fn(&Published) -> bool + Send + Sync + 'static) {
        *self.refuse.lock().unwrap() = Some(Box::new(which));
    }

    fn refuse_nothing(&self) {
        *self.refuse.lock().unwrap() = None;
    }

    fn publish(&self, p: Published) -> Result<(), TransportError> {
        let refused = self.refuse.lock().unwrap().as_ref().is_some_and(|r| r(&p));
        if refused {
            self.refused.lock().unwrap().push(p);
            return Err(TransportError::Nacked);
        }
        self.confirmed.lock().unwrap().push(p);
        Ok(())
    }

    /// Everything confirmed since the last call, by name.
    fn take(&self) -> Vec<Published> {
        std::mem::take(&mut *self.confirmed.lock().unwrap())
    }

    fn refused(&self) -> Vec<String> {
        self.refused
            .lock()
            .unwrap()
            .iter()
            .map(Published::name)
            .collect()
    }
}

#[async_trait]
impl Transport for FakeTransport {
    async fn publish_step(
        &self,
        provider: ProviderId,
        body: Vec<u8>,
        delay: Duration,
    ) -> Result<(), TransportError> {
        let message = StepMessage::from_bytes(&body).expect("the engine writes step messages");
        self.publish(Published::Step {
            provider,
            message,
            delay,
        })
    }

    async fn publish_event(
        &self,
        routing_key: &str,
        _request_id: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(), TransportError> {
        let event = serde_json::from_slice(&body).expect("the engine writes events");
        self.publish(Published::Event {
            routing_key: routing_key.into(),
            event,
        })
    }

    async fn publish_pause(
        &self,
        provider: ProviderId,
        _until_ms: i64,
    ) -> Result<(), TransportError> {
        self.publish(Published::Pause { provider })
    }

    async fn publish_dead(
        &self,
        body: &[u8],
        _props: &OriginalProps,
        reason: &DeadReason,
    ) -> Result<(), TransportError> {
        self.publish(Published::Dead {
            body: body.to_vec(),
            reason: reason.clone(),
        })
    }
}

/// A provider whose steps answer what the test scripted (done by default).
struct FakeProvider {
    answers: Mutex<HashMap<&'static str, VecDeque<Result<StepOutcome, StepError>>>>,
    calls: Mutex<Vec<&'static str>>,
}

const PLAN: [&str; 2] = ["create_tenant", "create_user"];

impl FakeProvider {
    fn new() -> Self {
        FakeProvider {
            answers: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    fn answer(&self, step: &'static str, answer: Result<StepOutcome, StepError>) {
        self.answers
            .lock()
            .unwrap()
            .entry(step)
            .or_default()
            .push_back(answer);
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn id(&self) -> ProviderId {
        ProviderId::Sharespine
    }

    fn plan(&self, _operation: Operation, input: &Value) -> Result<Vec<StepKey>, String> {
        match input.get("tenant") {
            Some(_) => Ok(PLAN.map(StepKey::new).to_vec()),
            None => Err("input.tenant is missing".into()),
        }
    }

    fn poll_policy(&self, _step: &str) -> Option<PollPolicy> {
        None
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        }
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn concurrency(&self) -> usize {
        4
    }

    async fn run(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        self.calls.lock().unwrap().push(ctx.step.name);
        let scripted = self
            .answers
            .lock()
            .unwrap()
            .get_mut(ctx.step.name)
            .and_then(VecDeque::pop_front);
        scripted.unwrap_or_else(|| {
            Ok(StepOutcome::Done(
                StepDone::default().with(&format!("{}_id", ctx.step.name), 7),
            ))
        })
    }
}

/// An engine on a fresh SQLite ledger with the fake provider as Sharespine.
struct Harness {
    engine: Engine,
    ledger: Arc<dyn Ledger>,
    provider: Arc<FakeProvider>,
    t: FakeTransport,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.sqlite", dir.path().display());
        let ledger = crate::ledger::open(&url).await.unwrap();
        let provider = Arc::new(FakeProvider::new());
        let mut providers = Providers::new();
        providers.insert(
            ProviderId::Sharespine,
            provider.clone() as Arc<dyn Provider>,
        );
        let settings = EngineSettings {
            max_body_bytes: 1 << 20,
            lease_margin: Duration::from_secs(5),
        };
        let engine = Engine::new(providers, ledger.clone(), Metrics::new(), settings);
        Harness {
            engine,
            ledger,
            provider,
            t: FakeTransport::default(),
            _dir: dir,
        }
    }

    async fn request(&self, body: &[u8]) {
        self.engine
            .handle_request(&self.t, incoming(body))
            .await
            .expect("the request is handled");
    }

    async fn step(&self, message: &StepMessage) {
        self.step_body(&message.to_bytes()).await
    }

    async fn step_body(&self, body: &[u8]) {
        self.engine
            .handle_step(&self.t, incoming(body))
            .await
            .expect("the step message is handled");
    }

    async fn status(&self, request_id: &str) -> Status {
        self.ledger.get(request_id).await.unwrap().unwrap().status
    }
}

fn incoming(body: &[u8]) -> Incoming<'_> {
    Incoming {
        body,
        redelivered: false,
        replay: false,
        props: OriginalProps::default(),
        delivery_count: 0,
        header_request_id: HeaderId::Absent,
    }
}

fn request_body(request_id: &str) -> Vec<u8> {
    json!({"request_id": request_id, "provider": "sharespine", "input": {"tenant": {}}})
        .to_string()
        .into_bytes()
}

fn names(published: &[Published]) -> Vec<String> {
    published.iter().map(Published::name).collect()
}

/// The last step message published.
fn last_step(published: &[Published]) -> StepMessage {
    published
        .iter()
        .rev()
        .find_map(|p| match p {
            Published::Step { message, .. } => Some(message.clone()),
            _ => None,
        })
        .expect("a step message was published")
}

fn event(published: &[Published], kind: EventKind) -> Event {
    published
        .iter()
        .find_map(|p| match p {
            Published::Event { event, .. } if event.event == kind => Some(event.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind} event in {:?}", names(published)))
}

#[tokio::test]
async fn a_request_is_published_as_its_first_step_only() {
    let h = Harness::new().await;
    h.request(&request_body("r-1")).await;
    let out = h.t.take();
    assert_eq!(
        names(&out),
        ["step 0@0"],
        "accepted waits for the first step's run"
    );
    let first = last_step(&out);
    assert!(first.announce, "the first step carries the announce mark");
    assert_eq!(first.provider, ProviderId::Sharespine);
    assert_eq!(h.status("r-1").await, Status::Running);
    assert!(
        h.provider.calls().is_empty(),
        "no provider call before the step runs"
    );
}

#[tokio::test]
async fn each_step_publishes_its_event_before_its_successor_and_accepted_comes_first() {
    let h = Harness::new().await;
    h.request(&request_body("r-1")).await;
    let first = last_step(&h.t.take());

    h.step(&first).await;
    let out = h.t.take();
    assert_eq!(
        names(&out),
        [
            "sharespine.accepted",
            "sharespine.step_completed create_tenant",
            "step 1@1"
        ]
    );
    let next = last_step(&out);
    assert!(!next.announce, "accepted is published once");

    h.step(&next).await;
    let out = h.t.take();
    assert_eq!(
        names(&out),
        [
            "sharespine.step_completed create_user",
            "sharespine.completed"
        ]
    );
    let completed = event(&out, EventKind::Completed);
    assert_eq!(
        completed.outputs,
        json!({"create_tenant_id": 7, "create_user_id": 7})
            .as_object()
            .unwrap()
            .clone()
    );
    assert_eq!(completed.operation, Some(Operation::Onboard));
    assert_eq!(h.status("r-1").await, Status::Completed);
    assert_eq!(h.provider.calls(), PLAN);

    // A stale copy of the first message publishes nothing.
    h.step(&first).await;
    assert!(h.t.take().is_empty());
    assert_eq!(h.provider.calls(), PLAN, "no call for a stale copy");
}

#[tokio::test]
async fn a_refused_event_holds_the_onboarding_back_and_publishes_nothing_else() {
    let h = Harness::new().await;
    h.request(&request_body("r-1")).await;
    let first = last_step(&h.t.take());

    h.t.refuse(
        |p| matches!(p, Published::Event { event, .. } if event.event == EventKind::StepCompleted),
    );
    h.step(&first).await;
    let out = h.t.take();
    assert_eq!(
        names(&out),
        ["sharespine.accepted", "step 0@1"],
        "only the hold-back follows"
    );
    assert_eq!(h.t.refused(), ["sharespine.step_completed create_tenant"]);
    let held = last_step(&out);
    assert_eq!((held.step, held.held, held.announce), (0, 1, false));
    assert!(held.not_before_ms.is_some());
    let Published::Step { delay, .. } = &out[1] else {
        unreachable!()
    };
    assert!(
        *delay >= Duration::from_millis(100),
        "held back a while: {delay:?}"
    );

    // The broker takes events again: the held message publishes the refused
    // event, then the successor, without calling the provider again.
    h.t.refuse_nothing();
    h.step(&StepMessage {
        not_before_ms: None,
        ..held
    })
    .await;
    assert_eq!(
        names(&h.t.take()),
        ["sharespine.step_completed create_tenant", "step 1@2"]
    );
    assert_eq!(h.provider.calls(), ["create_tenant"]);
}

#[tokio::test]
async fn a_refused_accepted_keeps_the_announce_mark() {
    let h = Harness::new().await;
    h.request(&request_body("r-1")).await;
    let first = last_step(&h.t.take());

    h.t.refuse(
        |p| matches!(p, Published::Event { event, .. } if event.event == EventKind::Accepted),
    );
    h.step(&first).await;
    let out = h.t.take();
    assert_eq!(names(&out), ["step 0@1"]);
    assert!(
        last_step(&out).announce,
        "accepted is still to come, before anything else"
    );
    assert!(
        h.provider.calls().is_empty(),
        "no call before accepted is out"
    );
}

#[tokio::test]
async fn a_rejected_step_publishes_failed_before_the_dead_copy() {
    let h = Harness::new().await;
    let body = request_body("r-1");
    h.request(&body).await;
    let first = last_step(&h.t.take());
    h.provider.answer(
        "create_tenant",
        Err(StepError::rejected(Some(422), "taken")),
    );

    h.step(&first).await;
    let out = h.t.take();
    assert_eq!(
        names(&out),
        ["sharespine.accepted", "sharespine.failed", "dead rejected"]
    );
    let failed = event(&out, EventKind::Failed);
    let error = failed.error.expect("a failed event says why");
    assert_eq!(
        (
            error.kind,
            error.step.as_deref(),
            error.http_status,
            error.message.as_str()
        ),
        (
            ErrorKind::Rejected,
            Some("create_tenant"),
            Some(422),
            "taken"
        )
    );
    let Published::Dead { body: dead, reason } = &out[2] else {
        unreachable!()
    };
    assert_eq!(dead, &body, "the request is kept whole");
    assert_eq!(reason.request_id.as_deref(), Some("r-1"));
    assert_eq!(h.status("r-1").await, Status::Failed);
}

#[tokio::test]
async fn a_refused_failed_event_is_published_again_before_the_dead_copy() {
    let h = Harness::new().await;
    h.request(&request_body("r-1")).await;
    let first = last_step(&h.t.take());
    h.provider
        .answer("create_tenant", Err(StepError::job_failed("disk full")));

    h.t.refuse(|p| matches!(p, Published::Event { event, .. } if event.event == EventKind::Failed));
    h.step(&first).await;
    let out = h.t.take();
    assert_eq!(names(&out), ["sharespine.accepted", "step 0@1"]);
    assert_eq!(h.t.refused(), ["sharespine.failed"]);
    assert_eq!(
        h.status("r-1").await,
        Status::Failed,
        "the end is recorded first"
    );

    h.t.refuse_nothing();
    let held = last_step(&out);
    h.step(&StepMessage {
        not_before_ms: None,
        ..held
    })
    .await;
    assert_eq!(names(&h.t.take()), ["sharespine.failed", "dead job_failed"]);
    assert_eq!(h.provider.calls(), ["create_tenant"]);
}

#[tokio::test]
async fn a_transient_failure_publishes_the_step_again_and_nothing_else() {
    let h = Harness::new().await;
    h.request(&request_body("r-1")).await;
    let first = last_step(&h.t.take());
    h.provider.answer(
        "create_tenant",
        Err(StepError::transient(RetryReason::Timeout, "no answer")),
    );

    h.step(&first).await;
    let out = h.t.take();
    assert_eq!(names(&out), ["sharespine.accepted", "step 0@1"]);
    let again = last_step(&out);
    assert_eq!((again.attempt, again.uncertain), (1, true));

    // The retry succeeds and the chain goes on.
    h.step(&StepMessage {
        not_before_ms: None,
        ..again
    })
    .await;
    assert_eq!(
        names(&h.t.take()),
        ["sharespine.step_completed create_tenant", "step 1@2"]
    );
}

#[tokio::test]
async fn an_exhausted_retry_with_retry_after_pauses_the_provider_then_fails() {
    let h = Harness::new().await;
    h.request(&request_body("r-1")).await;
    let first = last_step(&h.t.take());
    h.provider.answer(
        "create_tenant",
        Err(StepError::Transient {
            reason: RetryReason::RateLimited,
            retry_after: Some(Duration::from_millis(1)),
            http_status: Some(429),
            message: "slow down".into(),
        }),
    );

    h.step(&StepMessage {
        attempt: 2,
        ..first
    })
    .await;
    let out = h.t.take();
    assert_eq!(
        names(&out),
        [
            "sharespine.accepted",
            "pause",
            "sharespine.failed",
            "dead exhausted"
        ]
    );
    let error = event(&out, EventKind::Failed).error.unwrap();
    assert_eq!(error.message, "slow down (gave up after 3 attempts)");
}

#[tokio::test]
async fn an_invalid_request_publishes_failed_then_the_dead_copy() {
    let h = Harness::new().await;
    let body = br#"{"request_id":"r-9","provider":"acme","input":{}}"#;
    h.request(body).await;
    let out = h.t.take();
    assert_eq!(names(&out), ["unknown.failed", "dead invalid_request"]);
    let failed = event(&out, EventKind::Failed);
    assert_eq!(failed.request_id.as_deref(), Some("r-9"));
    assert_eq!(failed.error.unwrap().kind, ErrorKind::InvalidRequest);
    assert!(
        h.ledger.get("r-9").await.unwrap().is_none(),
        "nothing recorded"
    );
}

#[tokio::test]
async fn a_step_message_for_an_unknown_provider_is_kept_as_invalid() {
    let h = Harness::new().await;
    let body = br#"{"request_id":"r-1","provider":"acme","seq":0,"step":0}"#;
    h.step_body(body).await;
    let out = h.t.take();
    assert_eq!(names(&out), ["unknown.failed", "dead invalid_request"]);
    let failed = event(&out, EventKind::Failed);
    assert_eq!(failed.request_id, None);
    assert_eq!(
        failed.error.unwrap().message,
        "step message for unknown provider \"acme\""
    );
    let Published::Dead { body: dead, .. } = &out[1] else {
        unreachable!()
    };
    assert_eq!(dead, body);

    h.step_body(b"{\"seq\":").await;
    assert_eq!(
        names(&h.t.take()),
        ["unknown.failed", "dead invalid_request"],
        "an unreadable step message too"
    );
}

#[tokio::test]
async fn a_copy_of_a_finished_request_publishes_its_final_event_again() {
    let h = Harness::new().await;
    let body = request_body("r-1");
    h.request(&body).await;
    let first = last_step(&h.t.take());
    h.step(&first).await;
    let next = last_step(&h.t.take());
    h.step(&next).await;
    let completed = event(&h.t.take(), EventKind::Completed);

    h.request(&body).await;
    let out = h.t.take();
    assert_eq!(names(&out), ["sharespine.completed"]);
    assert_eq!(
        event(&out, EventKind::Completed),
        completed,
        "the same event"
    );
}
