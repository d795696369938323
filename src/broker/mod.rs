//! Everything RabbitMQ: the only module that imports lapin.
//!
//! Owns the connection and its recovery (reconnect with back-off, readiness
//! meanwhile), the topology ([`topology`]), confirmed publishing (the engine's
//! [`crate::engine::Transport`]) and consuming: one consumer per queue, each
//! delivery handled in its own task and acknowledged only after the engine
//! says everything that follows from it is confirmed.
//!
//! Files: `session.rs` (a connection's life, failover between nodes),
//! `delivery.rs` (one delivery's handling and settlement), `publish.rs`
//! (confirmed publishing), `properties.rs` (what is read from and written into
//! message properties), `topology.rs`, `admin.rs` (operator access).
//!
//! A session fails, and the worker reconnects and declares its topology
//! again, when the connection is lost, when any consumer ends (a
//! `basic.cancel` from the broker, e.g. its queue was deleted) or when any of
//! its channels is closed (a channel error). Each is counted in
//! `onboarding_broker_session_failures_total{reason}` and logged once.

pub mod admin;
mod delivery;
mod properties;
mod publish;
mod session;
pub mod topology;

pub use properties::{dead_properties, is_replay, DEAD_HEADER_BUDGET};
pub use publish::{publish_confirmed, AmqpTransport};
pub use session::run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connection, ConnectionProperties};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker: {0}")]
    Other(String),
}

/// How the worker talks to the broker.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// The broker's nodes, tried in turn (one for a single broker).
    pub urls: Vec<String>,
    pub prefetch: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub shutdown_grace: Duration,
    /// For `amqps://`: CA certificates (PEM) trusted besides the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// A failing message is given up on (ended `failed` `exhausted`) at this
    /// many deliveries, before the queues' delivery limit.
    pub give_up_after_deliveries: u32,
    /// A publish unconfirmed this long fails the session.
    pub confirm_timeout: Duration,
}

/// Connects, naming the connection so operators can find it in the management UI.
///
/// An `amqps://` URL is verified with rustls against the system's roots
/// (rustls-platform-verifier) plus, when given, the CA certificates in
/// `tls_ca_file` (PEM); the server's certificate must name the URL's host.
/// `tls_ca_file` is read on every call, so a reconnect picks up a renewed CA.
pub async fn connect(
    url: &str,
    name: &str,
    tls_ca_file: Option<&Path>,
) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let Some(path) = tls_ca_file else {
        return Ok(Connection::connect(url, props).await?);
    };
    let pem = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| BrokerError::Other(format!("amqp.tls_ca_file {}: {e}", path.display())))?;
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    };
    let runtime = lapin::runtime::default_runtime()?;
    Ok(Connection::connect_with_config(url, props, tls, runtime).await?)
}

/// A channel in confirm mode, for publishing.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, BrokerError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// `host:port` of a broker URL: how logs, `/readyz` and the
/// `onboarding_broker_node` metric name a node (never its credentials).
pub fn node_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u
                .port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 });
            format!("{}:{port}", u.host_str().unwrap_or("?"))
        }
        Err(_) => "(unparseable url)".into(),
    }
}
