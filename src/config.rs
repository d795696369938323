//! Typed settings: `config/default.toml`, then the file named by `--config` /
//! `ONBOARDING_CONFIG`, then `ONBOARDING__SECTION__KEY` environment variables.
//!
//! Owns the [`Secret`] type, whose `Debug` and `Display` print nothing, so a
//! settings struct can be logged whole without leaking a password.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A value that must never be printed: passwords, client secrets.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The only way to read the value; grep for it when auditing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub metrics: MetricsSettings,
    pub ledger: LedgerSettings,
    pub worker: WorkerSettings,
    pub providers: ProvidersSettings,
    pub sandbox: SandboxSettings,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AmqpSettings {
    /// Broker URL; may carry a password, so it is a secret.
    pub url: Secret,
    /// The nodes of a RabbitMQ cluster, tried in turn: the worker connects to
    /// the first that answers and, on a lost connection, tries the next. When
    /// set, `url` is not used. From the environment: comma-separated.
    #[serde(default)]
    pub urls: Vec<Secret>,
    /// Unacknowledged deliveries per consumer (one consumer per queue).
    pub prefetch: NonZeroU16,
    /// Larger request bodies are `invalid_request`, kept whole in `onboarding.dead`.
    pub max_body_bytes: NonZeroUsize,
    /// First and longest pause between reconnection attempts.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// A publish unconfirmed this long fails its session (the worker
    /// reconnects, handing every delivery in hand back).
    pub confirm_timeout_ms: NonZeroU64,
    /// For `amqps://`: a PEM file of CA certificates trusted besides the
    /// system's roots; empty for the system's roots only.
    #[serde(default)]
    pub tls_ca_file: String,
}

impl AmqpSettings {
    /// The broker addresses to try, in order: `urls`, or else `url`.
    pub fn nodes(&self) -> Vec<&Secret> {
        if self.urls.is_empty() {
            vec![&self.url]
        } else {
            self.urls.iter().collect()
        }
    }

    /// `tls_ca_file`, or `None` when empty (the system's roots only).
    pub fn tls_ca_path(&self) -> Option<&Path> {
        (!self.tls_ca_file.is_empty()).then(|| Path::new(&self.tls_ca_file))
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct MetricsSettings {
    /// `/metrics`, `/healthz`, `/readyz` listen here (port 0: any free port).
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LedgerSettings {
    /// `sqlite://path` (one host) or `postgres://...` (many hosts). May hold a password.
    pub url: Secret,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkerSettings {
    /// How long SIGTERM waits for deliveries in hand before closing anyway.
    pub shutdown_grace_ms: u64,
    /// Added to a step's call timeout to form its lease in the ledger; a second
    /// copy of the same step waits this long before assuming the holder died.
    pub lease_margin_ms: u64,
    /// A message whose handling keeps failing is ended `failed` `exhausted` by
    /// the worker at this many deliveries, before the broker's delivery limit
    /// (50) would move it to `onboarding.dead` without an event.
    /// Below the queues' delivery limit; checked in [`Settings::load`].
    pub give_up_after_deliveries: NonZeroU32,
    /// `--log-format` overrides it.
    pub log_format: LogFormat,
}

/// How log lines are written (`worker.log_format`, `--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;
    // By hand rather than serde's derive, whose message for an unknown name
    // ("does not have variant constructor") does not say what would do.
    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("must be \"text\" or \"json\", not {name:?}")),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct ProvidersSettings {
    pub magento_bi: MagentoBiSettings,
    pub computestacks: ComputeStacksSettings,
    pub sharespine: SharespineSettings,
}

/// How a provider's HTTP calls are made and retried; one per provider.
#[derive(Clone, Debug, Deserialize)]
pub struct CallSettings {
    /// One HTTP call, connect to last byte.
    pub timeout_ms: u64,
    /// Transient failures of one step tolerated before `exhausted`.
    pub max_attempts: NonZeroU32,
    /// Back-off: full jitter over `min(cap, base * 2^attempt)`.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// A longer response body is a transient `bad_response`, never buffered whole.
    pub max_response_bytes: usize,
    /// Steps of this provider in flight at once in one worker.
    pub concurrency: NonZeroUsize,
    /// For `https://` base URLs: a PEM file of CA certificates trusted besides
    /// the system's roots; empty for the system's roots only.
    #[serde(default)]
    pub tls_ca_file: String,
}

impl CallSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// How an asynchronous job is waited on: each "not yet" goes back through a
/// delay queue after the current interval, which grows up to a cap.
#[derive(Clone, Debug, Deserialize)]
pub struct PollSettings {
    pub interval_ms: u64,
    pub growth: f64,
    pub max_interval_ms: u64,
    /// From the first poll; past it the request fails `timed_out`.
    pub deadline_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MagentoBiSettings {
    pub api_base: String,
    pub dashboard_base: String,
    pub username: String,
    pub password: Secret,
    pub client_id: i64,
    pub client_secret: Secret,
    /// Renew the token this long before `expires_in` runs out.
    pub token_renew_margin_ms: u64,
    pub calls: CallSettings,
    /// One entry per poll step: poll_signup, poll_connection, poll_connection_test, poll_dashboards.
    pub polls: BTreeMap<String, PollSettings>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ComputeStacksSettings {
    pub base_url: String,
    pub admin_username: String,
    pub admin_password: Secret,
    pub calls: CallSettings,
    /// Entry `poll_order`.
    pub polls: BTreeMap<String, PollSettings>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SharespineSettings {
    pub base_url: String,
    pub username: String,
    pub password: Secret,
    pub reseller_code: String,
    pub user_agent: String,
    pub calls: CallSettings,
}

/// `onboarding-worker sandbox` and `demo`: where the emulated APIs listen and
/// the credentials they accept (the worker's defaults, so the two fit).
#[derive(Clone, Debug, Deserialize)]
pub struct SandboxSettings {
    pub sharespine_listen: String,
    pub computestacks_listen: String,
    pub magento_api_listen: String,
    pub magento_dashboard_listen: String,
    /// Added to every sandbox response.
    pub latency_ms: u64,
    /// How long emulated asynchronous jobs (orders, signups, connection tests, dashboards) take.
    pub job_duration_ms: u64,
    /// Lifetime of a Magento BI access token.
    pub token_ttl_s: u64,
    /// `[sandbox.magento_bi]`: how the emulated Magento BI API answers where
    /// the seed leaves an answer open (one knob per open point; the seed's
    /// example by default).
    #[serde(default)]
    pub magento_bi: crate::sandbox::magento_bi::Readings,
    /// `[sandbox.computestacks]`: the same for the emulated ComputeStacks API
    /// (the guide's examples by default).
    #[serde(default)]
    pub computestacks: crate::sandbox::computestacks::Readings,
    /// `[sandbox.sharespine]`: the same for the emulated Sharespine API (the
    /// seed's examples by default).
    #[serde(default)]
    pub sharespine: crate::sandbox::sharespine::Readings,
}

/// A `host:port` address, with an example in the error (serde's own message
/// is only "invalid socket address syntax").
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "must be an address such as 127.0.0.1:9464, not {text:?}"
        ))
    })
}

/// The built-in defaults: the same file that ships as `config/default.toml`,
/// compiled in so the binary works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

impl Settings {
    /// Loads defaults, then `file` (if any), then `ONBOARDING__*` from the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    message: "not found".into(),
                });
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let mut environment = config::Environment::with_prefix("ONBOARDING")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("amqp.urls");
        if let Some(env) = env {
            environment = environment.source(Some(env.into_iter().collect()));
        }
        builder = builder.add_source(environment);
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Each broker address with the key that names it in errors.
    fn amqp_keys(&self) -> Vec<(String, &Secret)> {
        if self.amqp.urls.is_empty() {
            vec![("amqp.url".to_string(), &self.amqp.url)]
        } else {
            (self.amqp.urls.iter().enumerate())
                .map(|(i, u)| (format!("amqp.urls[{i}]"), u))
                .collect()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::Invalid(format!("{key}: {why}")));
        // Parsed here so a bad URL is a start-up error naming the key; the
        // message never quotes the URL, which may hold a password.
        for (key, url) in self.amqp_keys() {
            match url::Url::parse(url.expose()) {
                Ok(u) if matches!(u.scheme(), "amqp" | "amqps") && u.host_str().is_some() => {}
                Ok(_) => {
                    return bad(
                        &key,
                        "must be amqp://user:password@host:port/vhost (or amqps://)",
                    )
                }
                Err(e) => return bad(&key, &format!("is not a URL ({e})")),
            }
        }
        if self.worker.give_up_after_deliveries.get()
            >= crate::broker::topology::DELIVERY_LIMIT as u32
        {
            return bad(
                "worker.give_up_after_deliveries",
                &format!(
                    "must be from 1 to {} (below the queues' delivery limit)",
                    crate::broker::topology::DELIVERY_LIMIT - 1
                ),
            );
        }
        let url = self.ledger.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return bad("ledger.url", "must start with sqlite: or postgres://");
        }
        check_ca_file("amqp.tls_ca_file", &self.amqp.tls_ca_file)?;
        for (name, calls) in [
            ("magento_bi", &self.providers.magento_bi.calls),
            ("computestacks", &self.providers.computestacks.calls),
            ("sharespine", &self.providers.sharespine.calls),
        ] {
            check_ca_file(
                &format!("providers.{name}.calls.tls_ca_file"),
                &calls.tls_ca_file,
            )?;
            if calls.timeout_ms == 0 {
                return bad(
                    &format!("providers.{name}.calls.timeout_ms"),
                    "must be at least 1",
                );
            }
        }
        for (provider, polls) in [
            ("magento_bi", &self.providers.magento_bi.polls),
            ("computestacks", &self.providers.computestacks.polls),
        ] {
            for (step, p) in polls {
                if p.growth < 1.0 || !p.growth.is_finite() {
                    return bad(
                        &format!("providers.{provider}.polls.{step}.growth"),
                        "must be at least 1.0",
                    );
                }
                if p.interval_ms == 0 {
                    return bad(
                        &format!("providers.{provider}.polls.{step}.interval_ms"),
                        "must be at least 1",
                    );
                }
            }
        }
        Ok(())
    }
}

/// A configured CA file must be readable and hold at least one PEM certificate,
/// so a typo fails at start-up (exit 2) rather than at the first TLS handshake.
fn check_ca_file(key: &str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Ok(());
    }
    crate::tls::read_ca_file(path)
        .map(drop)
        .map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn secret_prints_nothing_in_debug_or_display() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn defaults_load_and_environment_overrides_them() {
        let env = HashMap::from([
            ("ONBOARDING__AMQP__PREFETCH".to_string(), "7".to_string()),
            (
                "ONBOARDING__PROVIDERS__SHARESPINE__BASE_URL".to_string(),
                "http://example.test".to_string(),
            ),
            (
                "ONBOARDING__PROVIDERS__MAGENTO_BI__CALLS__TIMEOUT_MS".to_string(),
                "1234".to_string(),
            ),
        ]);
        let s = Settings::load_with_env(None, Some(env)).unwrap();
        assert_eq!(s.amqp.prefetch.get(), 7);
        assert_eq!(s.providers.sharespine.base_url, "http://example.test");
        assert_eq!(s.providers.magento_bi.calls.timeout_ms, 1234);
        assert_eq!(s.amqp.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.metrics.listen.to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let env = HashMap::from([("ONBOARDING__AMQP__PREFETCH".to_string(), "lots".to_string())]);
        let err = Settings::load_with_env(None, Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefetch"), "{err}");
        let env = HashMap::from([("ONBOARDING__AMQP__PREFETCH".to_string(), "0".to_string())]);
        let err = Settings::load_with_env(None, Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.prefetch"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_or_range_names_its_key_and_what_would_do() {
        let cases = [
            ("AMQP__PREFETCH", "0", "amqp.prefetch", "nonzero"),
            (
                "AMQP__MAX_BODY_BYTES",
                "0",
                "amqp.max_body_bytes",
                "nonzero",
            ),
            (
                "METRICS__LISTEN",
                "localhost",
                "metrics.listen",
                "an address such as 127.0.0.1:9464",
            ),
            (
                "WORKER__LOG_FORMAT",
                "yaml",
                "worker.log_format",
                r#"must be "text" or "json""#,
            ),
            (
                "WORKER__GIVE_UP_AFTER_DELIVERIES",
                "0",
                "worker.give_up_after_deliveries",
                "nonzero",
            ),
            (
                "WORKER__GIVE_UP_AFTER_DELIVERIES",
                "50",
                "worker.give_up_after_deliveries",
                "from 1 to 49",
            ),
            (
                "PROVIDERS__SHARESPINE__CALLS__CONCURRENCY",
                "0",
                "providers.sharespine.calls.concurrency",
                "nonzero",
            ),
            (
                "PROVIDERS__MAGENTO_BI__CALLS__MAX_ATTEMPTS",
                "0",
                "providers.magento_bi.calls.max_attempts",
                "nonzero",
            ),
        ];
        for (var, value, key, why) in cases {
            let env = HashMap::from([(format!("ONBOARDING__{var}"), value.to_string())]);
            let err = Settings::load_with_env(None, Some(env))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains(why),
                "{var}={value}: {err}"
            );
        }
        let env = HashMap::from([(
            "ONBOARDING__WORKER__LOG_FORMAT".to_string(),
            "json".to_string(),
        )]);
        let s = Settings::load_with_env(None, Some(env)).unwrap();
        assert_eq!(s.worker.log_format, LogFormat::Json);
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_names_its_key() {
        let env = HashMap::from([(
            "ONBOARDING__AMQP__TLS_CA_FILE".to_string(),
            "/nonexistent/ca.pem".to_string(),
        )]);
        let err = Settings::load_with_env(None, Some(env))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.tls_ca_file"), "{err}");
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let not_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_pem.path(), "hello").unwrap();
        let env = HashMap::from([(
            "ONBOARDING__PROVIDERS__SHARESPINE__CALLS__TLS_CA_FILE".to_string(),
            not_pem.path().display().to_string(),
        )]);
        let err = Settings::load_with_env(None, Some(env))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("providers.sharespine.calls.tls_ca_file") && err.contains("no PEM"),
            "{err}"
        );
        let s = Settings::load_with_env(None, Some(HashMap::new())).unwrap();
        assert_eq!(s.amqp.tls_ca_file, "", "system roots by default");
        assert_eq!(s.providers.magento_bi.calls.tls_ca_file, "");
    }

    #[test]
    fn a_malformed_broker_url_names_its_key_and_never_quotes_the_password() {
        for url in [
            "amqp:guest:s3cr3t@host",
            "http://guest:s3cr3t@host/",
            "not a url s3cr3t",
        ] {
            let env = HashMap::from([("ONBOARDING__AMQP__URL".to_string(), url.to_string())]);
            let err = Settings::load_with_env(None, Some(env))
                .unwrap_err()
                .to_string();
            assert!(err.contains("amqp.url"), "{url}: {err}");
            assert!(!err.contains("s3cr3t"), "{url}: {err}");
        }
    }

    #[test]
    fn a_missing_config_file_is_an_error_naming_it() {
        let err = Settings::load(Some(Path::new("/nonexistent/x.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
    }
}
