//! Wires a worker together from its settings and runs it until shutdown:
//! metrics listener, ledger, providers, engine, broker consumers, and a
//! sampler that keeps the running/waiting gauges current.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{self, BrokerSettings};
use crate::config::Settings;
use crate::engine::{Engine, EngineSettings};
use crate::ledger::{self, Ledger};
use crate::metrics::{self, Health, Metrics};
use crate::providers;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("metrics listener on {listen}: {source}")]
    Listen {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
}

/// A worker that has bound its listener and opened its ledger.
pub struct Worker {
    pub metrics_addr: SocketAddr,
    pub metrics: Metrics,
    pub health: Health,
    pub ledger: Arc<dyn Ledger>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Starts everything; the worker runs until `shutdown` is cancelled.
    pub async fn start(
        settings: &Settings,
        shutdown: CancellationToken,
    ) -> Result<Worker, WorkerError> {
        let metrics = Metrics::new();
        let health = Health::default();
        let ledger = ledger::resilient::Resilient::wrap(
            ledger::open(settings.ledger.url.expose()).await?,
            metrics.clone(),
            health.clone(),
        );
        let providers = providers::build_all(&settings.providers, &metrics);
        let engine = Engine::new(
            providers,
            ledger.clone(),
            metrics.clone(),
            EngineSettings {
                max_body_bytes: settings.amqp.max_body_bytes.get(),
                lease_margin: Duration::from_millis(settings.worker.lease_margin_ms),
            },
        );
        let listener_stop = CancellationToken::new();
        let (metrics_addr, metrics_task) = {
            let stop = listener_stop.clone();
            metrics::serve(
                settings.metrics.listen,
                metrics.clone(),
                health.clone(),
                async move { stop.cancelled().await },
            )
            .await
            .map_err(|source| WorkerError::Listen {
                listen: settings.metrics.listen,
                source,
            })?
        };
        info!(%metrics_addr, "metrics, healthz and readyz listening");
        let sampler = tokio::spawn(sample_gauges(
            ledger.clone(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        let broker_settings = BrokerSettings {
            urls: (settings.amqp.nodes().iter())
                .map(|u| u.expose().to_string())
                .collect(),
            prefetch: settings.amqp.prefetch.get(),
            reconnect_min: Duration::from_millis(settings.amqp.reconnect_min_ms),
            reconnect_max: Duration::from_millis(settings.amqp.reconnect_max_ms),
            shutdown_grace: Duration::from_millis(settings.worker.shutdown_grace_ms),
            tls_ca_file: settings.amqp.tls_ca_path().map(Into::into),
            give_up_after_deliveries: settings.worker.give_up_after_deliveries.get(),
            confirm_timeout: Duration::from_millis(settings.amqp.confirm_timeout_ms.get()),
        };
        let task = {
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                broker::run(broker_settings, engine, health, metrics, shutdown).await;
                let _ = sampler.await;
                listener_stop.cancel();
                let _ = metrics_task.await;
            })
        };
        Ok(Worker {
            metrics_addr,
            metrics,
            health,
            ledger,
            task,
        })
    }

    /// Waits until the worker has stopped (after its shutdown token was cancelled).
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            warn!(error.message = %e, "worker task ended abnormally");
        }
    }
}

/// Samples the gauges that are not counted as things happen, every 5 s; the
/// same read tells an idle worker's `/readyz` whether the ledger answers.
async fn sample_gauges(
    ledger: Arc<dyn Ledger>,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) {
    loop {
        match ledger.counts().await {
            Ok((running, waiting)) => {
                metrics.onboardings_running.set(running);
                metrics.onboardings_waiting.set(waiting);
                if health.ledger_down() {
                    health.set_ledger_down(false, &metrics);
                }
            }
            Err(e) => {
                if e.is_outage() {
                    health.set_ledger_down(true, &metrics);
                }
                warn!(error.message = %e, "could not sample the ledger");
            }
        }
        metrics.runtime_alive_tasks.set(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as i64,
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received"),
        _ = term => info!("SIGTERM received"),
    }
}
