//! Every metric the worker exports (names live here and nowhere else), and the
//! `/metrics`, `/healthz`, `/readyz` listener.
//!
//! Labels come from bounded sets only: provider, operation, step names, outcome
//! and reason enums. Never a request id, never an error text.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The worker's metrics, registered in a registry of their own (so tests can
/// build many workers in one process).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Final outcome of requests: completed, or the failure's error kind.
    pub requests_total: IntCounterVec,
    /// Requests taken on (the `accepted` event).
    pub requests_accepted_total: IntCounterVec,
    /// Step executions by outcome: done, pending, retry, skipped (already in the ledger), and failure kinds.
    pub steps_total: IntCounterVec,
    /// Time of one step's provider work (not its waits).
    pub step_duration_seconds: HistogramVec,
    /// Provider HTTP calls by status class (2xx..5xx, timeout, connection).
    pub provider_http_requests_total: IntCounterVec,
    /// Steps sent back through a delay queue after a transient failure, by reason.
    pub retries_total: IntCounterVec,
    /// "Not yet" answers of a poll step.
    pub polls_total: IntCounterVec,
    /// Steps running in this worker now.
    pub steps_in_flight: IntGaugeVec,
    /// Requests the ledger knows as running / waiting in a delay queue (sampled).
    pub onboardings_running: IntGauge,
    pub onboardings_waiting: IntGauge,
    /// A second copy of a running request, dropped.
    pub duplicates_dropped_total: IntCounterVec,
    /// Messages put in `onboarding.dead`, by error kind.
    pub dead_lettered_total: IntCounterVec,
    /// Provider access tokens obtained (Magento BI).
    pub token_renewals_total: IntCounterVec,
    /// A create that may have been repeated after a crash (the call succeeded
    /// earlier but was not recorded): see the README's guarantees.
    pub create_repeats_total: IntCounterVec,
    /// Of those, the ones where the provider's answer showed the earlier
    /// attempt's resource and the step adopted it (nothing made twice).
    pub create_repeats_recognised_total: IntCounterVec,
    /// Leases taken over at once because their holder's worker was gone.
    pub lease_takeovers_total: prometheus::IntCounter,
    /// Steps sent to wait out a provider's shared pause (its 429/503 with
    /// `Retry-After`), by provider.
    pub provider_pause_waits_total: IntCounterVec,
    /// How long each provider's steps are still held by its pause (sampled).
    pub provider_paused_seconds: prometheus::GaugeVec,
    /// Events published, by event name.
    pub events_published_total: IntCounterVec,
    /// Tasks alive in the worker's runtime (sampled): flat while onboardings
    /// wait, since a waiting onboarding is a message in a delay queue.
    pub runtime_alive_tasks: IntGauge,
    /// 1 while connected to the broker and consuming.
    pub broker_connected: IntGauge,
    /// 1 for the broker node the worker is connected to, 0 for the others.
    pub broker_node: IntGaugeVec,
    /// Connections (re)established.
    pub broker_connections_total: prometheus::IntCounter,
    /// Broker sessions that ended by failure, by reason (connection_lost,
    /// consumer_cancelled, channel_closed, confirm_timeout).
    pub broker_session_failures_total: IntCounterVec,
    /// 1 while the ledger does not answer (consumption paused, not ready).
    pub ledger_unreachable: IntGauge,
    /// Ledger operation latency, by operation (accept, claim, record_step, ...).
    pub ledger_seconds: HistogramVec,
    /// Publish-to-confirm latency, by what was published (step, event, dead).
    pub publish_seconds: HistogramVec,
}

const STEP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let step_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "onboarding_step_duration_seconds",
                "Time of one step's provider work, by provider and step.",
            )
            .buckets(STEP_BUCKETS.to_vec()),
            &["provider", "step"],
        )
        .expect("valid metric");
        r.register(Box::new(step_duration_seconds.clone()))
            .expect("registered once");
        let steps_in_flight = IntGaugeVec::new(
            Opts::new(
                "onboarding_steps_in_flight",
                "Steps running in this worker now, by provider.",
            ),
            &["provider"],
        )
        .expect("valid metric");
        r.register(Box::new(steps_in_flight.clone()))
            .expect("registered once");
        let fast_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
        ];
        let ledger_seconds = HistogramVec::new(
            HistogramOpts::new(
                "onboarding_ledger_seconds",
                "Time of one ledger operation, by operation.",
            )
            .buckets(fast_buckets.clone()),
            &["op"],
        )
        .expect("valid metric");
        r.register(Box::new(ledger_seconds.clone()))
            .expect("registered once");
        let publish_seconds = HistogramVec::new(
            HistogramOpts::new(
                "onboarding_publish_seconds",
                "Time from publishing a message to the broker's confirm, by what was published.",
            )
            .buckets(fast_buckets),
            &["what"],
        )
        .expect("valid metric");
        r.register(Box::new(publish_seconds.clone()))
            .expect("registered once");
        let broker_connections_total = prometheus::IntCounter::new(
            "onboarding_broker_connections_total",
            "Broker connections established (first and reconnections).",
        )
        .expect("valid metric");
        r.register(Box::new(broker_connections_total.clone()))
            .expect("registered once");
        let build_info = IntGaugeVec::new(
            Opts::new("onboarding_build_info", "Always 1; the version as a label."),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build_info.clone()))
            .expect("registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let m = Metrics {
            requests_total: counter(&r, "onboarding_requests_total", "Requests that ended, by provider, operation and outcome (completed or the error kind).", &["provider", "operation", "outcome"]),
            requests_accepted_total: counter(&r, "onboarding_requests_accepted_total", "Valid requests taken on.", &["provider", "operation"]),
            steps_total: counter(&r, "onboarding_steps_total", "Step executions by provider, step and outcome.", &["provider", "step", "outcome"]),
            step_duration_seconds,
            provider_http_requests_total: counter(&r, "onboarding_provider_http_requests_total", "Provider HTTP calls by provider, step and status class.", &["provider", "step", "status_class"]),
            retries_total: counter(&r, "onboarding_retries_total", "Steps retried through a delay queue, by provider and reason.", &["provider", "reason"]),
            polls_total: counter(&r, "onboarding_polls_total", "Poll answers of 'not yet', by provider and step.", &["provider", "step"]),
            steps_in_flight,
            onboardings_running: gauge(&r, "onboarding_onboardings_running", "Requests the ledger holds as running (sampled)."),
            onboardings_waiting: gauge(&r, "onboarding_onboardings_waiting", "Running requests whose next step waits in a delay queue (sampled)."),
            duplicates_dropped_total: counter(&r, "onboarding_duplicates_dropped_total", "Copies of a running request dropped, by provider.", &["provider"]),
            dead_lettered_total: counter(&r, "onboarding_dead_lettered_total", "Messages put in onboarding.dead, by reason (error kind).", &["reason"]),
            token_renewals_total: counter(&r, "onboarding_token_renewals_total", "Provider access tokens obtained, by provider.", &["provider"]),
            create_repeats_total: counter(&r, "onboarding_create_repeats_total", "Creates run again after an attempt that may have reached the provider (found already made, or made afresh): an upper bound of repeats, by provider and step.", &["provider", "step"]),
            create_repeats_recognised_total: counter(&r, "onboarding_create_repeats_recognised_total", "Of the possible repeats, those where the earlier attempt's resource was found at the provider and adopted (nothing made twice), by provider and step.", &["provider", "step"]),
            events_published_total: counter(&r, "onboarding_events_published_total", "Events published, by event.", &["event"]),
            broker_connected: gauge(&r, "onboarding_broker_connected", "1 while connected to the broker and consuming."),
            broker_node: {
                let g = IntGaugeVec::new(Opts::new("onboarding_broker_node", "1 for the broker node (host:port from amqp.urls) the worker is connected to, 0 for the others."), &["node"]).expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            runtime_alive_tasks: gauge(&r, "onboarding_runtime_alive_tasks", "Tasks alive in the worker's async runtime (sampled every 5 s)."),
            broker_connections_total,
            provider_pause_waits_total: counter(&r, "onboarding_provider_pause_waits_total", "Steps sent to wait out a provider's pause (its 429 or 503 with Retry-After, shared by every worker), by provider.", &["provider"]),
            provider_paused_seconds: {
                let g = prometheus::GaugeVec::new(Opts::new("onboarding_provider_paused_seconds", "Seconds each provider's steps are still held by its shared pause, as of the last step or pause seen."), &["provider"]).expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            lease_takeovers_total: {
                let c = prometheus::IntCounter::new("onboarding_lease_takeovers_total", "Leases taken over at once because the worker holding them was gone (its PostgreSQL session, or its process on this host).").expect("valid metric");
                r.register(Box::new(c.clone())).expect("registered once");
                c
            },
            broker_session_failures_total: counter(&r, "onboarding_broker_session_failures_total", "Broker sessions that failed, by reason: connection_lost, consumer_cancelled (a basic.cancel or an ended consumer), channel_closed, confirm_timeout (a publish unconfirmed for amqp.confirm_timeout_ms).", &["reason"]),
            ledger_unreachable: gauge(&r, "onboarding_ledger_unreachable", "1 while the ledger does not answer: consumption paused, /readyz not ready."),
            ledger_seconds,
            publish_seconds,
            registry: r,
        };
        m.zero_known_series();
        m
    }

    /// Creates the series of every known label combination at 0, so that the
    /// first increment of each shows in `rate()` and `increase()` (a series
    /// born at 1 has no earlier sample to compare with).
    fn zero_known_series(&self) {
        use crate::domain::{ErrorKind, EventKind, Operation, ProviderId, RetryReason};
        // A request ends `completed` or failed with one of the error kinds.
        let outcomes: Vec<&str> = std::iter::once("completed")
            .chain(ErrorKind::ALL.map(ErrorKind::as_str))
            .collect();
        for p in ProviderId::ALL {
            // Only Sharespine offers a login URL.
            let operations = Operation::ALL
                .into_iter()
                .filter(|op| *op == Operation::Onboard || p == ProviderId::Sharespine);
            for op in operations {
                self.requests_accepted_total
                    .with_label_values(&[p.as_str(), op.as_str()]);
                for outcome in &outcomes {
                    self.requests_total
                        .with_label_values(&[p.as_str(), op.as_str(), outcome]);
                }
            }
            for r in RetryReason::ALL {
                self.retries_total
                    .with_label_values(&[p.as_str(), r.as_str()]);
            }
            self.duplicates_dropped_total
                .with_label_values(&[p.as_str()]);
            self.steps_in_flight.with_label_values(&[p.as_str()]);
        }
        for k in ErrorKind::ALL {
            self.dead_lettered_total.with_label_values(&[k.as_str()]);
        }
        self.token_renewals_total
            .with_label_values(&[ProviderId::MagentoBi.as_str()]);
        for r in [
            "connection_lost",
            "consumer_cancelled",
            "channel_closed",
            "confirm_timeout",
        ] {
            self.broker_session_failures_total.with_label_values(&[r]);
        }
        for e in EventKind::ALL {
            self.events_published_total.with_label_values(&[e.as_str()]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }
}

/// Liveness and readiness, shared by the broker loop and the HTTP listener.
/// Ready: connected to the broker and consuming, and the ledger reachable.
#[derive(Clone, Default)]
pub struct Health {
    /// Broker session up (set by the broker loop).
    ready: Arc<AtomicBool>,
    /// The broker node (`host:port`) of the session, for `/readyz`.
    node: Arc<std::sync::Mutex<Option<String>>>,
    /// The ledger did not answer; cleared when it answers again.
    ledger_down: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    pub fn set_node(&self, node: Option<String>) {
        *self.node.lock().expect("health lock") = node;
    }
    /// The broker node of the current session, if any.
    pub fn node(&self) -> Option<String> {
        self.node.lock().expect("health lock").clone()
    }
    /// Records whether the ledger answers, here and in
    /// `onboarding_ledger_unreachable`.
    pub fn set_ledger_down(&self, down: bool, metrics: &Metrics) {
        self.ledger_down.store(down, Ordering::SeqCst);
        metrics.ledger_unreachable.set(i64::from(down));
    }
    pub fn ledger_down(&self) -> bool {
        self.ledger_down.load(Ordering::SeqCst)
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.ledger_down()
    }
    /// Why the worker is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.ready.load(Ordering::SeqCst) {
            Some("broker not connected")
        } else if self.ledger_down() {
            Some("ledger unreachable")
        } else {
            None
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// The metrics listener's routes.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.not_ready_reason() {
        None => (
            StatusCode::OK,
            format!(
                "ready (broker node {})\n",
                s.health.node().unwrap_or_else(|| "?".into())
            ),
        ),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Binds `listen` and serves until `shutdown` resolves. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(metrics, health);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error.message = %e, "metrics listener failed");
        }
    });
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series of a metric in the exposition, as their label text.
    fn series(text: &str, name: &str) -> Vec<String> {
        let prefix = format!("{name}{{");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|l| l.split('}').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn every_known_label_combination_starts_at_zero() {
        let text = Metrics::new().render();
        // Three providers' onboard, Sharespine's login_url; completed and five error kinds.
        assert_eq!(series(&text, "onboarding_requests_accepted_total").len(), 4);
        assert_eq!(series(&text, "onboarding_requests_total").len(), 4 * 6);
        assert!(series(&text, "onboarding_requests_total").contains(
            &r#"operation="login_url",outcome="timed_out",provider="sharespine""#.to_string()
        ));
        assert_eq!(series(&text, "onboarding_retries_total").len(), 3 * 8);
        assert_eq!(
            series(&text, "onboarding_dead_lettered_total"),
            [
                r#"reason="exhausted""#,
                r#"reason="invalid_request""#,
                r#"reason="job_failed""#,
                r#"reason="rejected""#,
                r#"reason="timed_out""#,
            ]
        );
        assert_eq!(
            series(&text, "onboarding_events_published_total"),
            [
                r#"event="accepted""#,
                r#"event="completed""#,
                r#"event="failed""#,
                r#"event="step_completed""#,
            ]
        );
    }
}
