//! The project's emulation of the three provider APIs: real HTTP servers, strict
//! the way the real services are, with knobs for latency and faults and call
//! counts for tests. `onboarding-worker sandbox` serves them; tests and `demo`
//! start them in-process on port 0.

pub mod computestacks;
pub mod faults;
pub mod magento_bi;
pub mod sharespine;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ProvidersSettings, SandboxSettings};

/// What the emulated APIs accept and how they behave.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    pub sharespine: sharespine::Options,
    pub computestacks: computestacks::Options,
    pub magento_bi: magento_bi::Options,
    /// Added to every response of every API.
    pub latency: Duration,
}

impl SandboxOptions {
    /// Accepts exactly the credentials the worker is configured with.
    pub fn from_settings(sandbox: &SandboxSettings, providers: &ProvidersSettings) -> Self {
        let job = Duration::from_millis(sandbox.job_duration_ms);
        SandboxOptions {
            sharespine: sharespine::Options {
                username: providers.sharespine.username.clone(),
                password: providers.sharespine.password.expose().to_string(),
                reseller_code: providers.sharespine.reseller_code.clone(),
                readings: sandbox.sharespine.clone(),
            },
            computestacks: computestacks::Options {
                admin_username: providers.computestacks.admin_username.clone(),
                admin_password: providers.computestacks.admin_password.expose().to_string(),
                order_duration: job,
                readings: sandbox.computestacks.clone(),
            },
            magento_bi: magento_bi::Options {
                username: providers.magento_bi.username.clone(),
                password: providers.magento_bi.password.expose().to_string(),
                client_id: providers.magento_bi.client_id,
                client_secret: providers.magento_bi.client_secret.expose().to_string(),
                token_ttl: Duration::from_secs(sandbox.token_ttl_s),
                job_duration: job,
                readings: sandbox.magento_bi.clone(),
            },
            latency: Duration::from_millis(sandbox.latency_ms),
        }
    }
}

/// `onboarding-worker sandbox --help`'s epilogue: every reading of every API
/// (each provider's [`magento_bi::READINGS_HELP`] and the like), after what
/// they have in common.
pub fn readings_help() -> String {
    [
        READINGS_INTRO,
        magento_bi::READINGS_HELP,
        computestacks::READINGS_HELP,
        sharespine::READINGS_HELP,
    ]
    .join("\n\n")
}

const READINGS_INTRO: &str = "\
Readings: where a provider's documents leave the shape of an answer open, its emulated API
can answer in several ways, one knob per open point; every default is the documents' own
example. Set them in config, in the [sandbox.magento_bi], [sandbox.computestacks] and
[sandbox.sharespine] tables (or ONBOARDING__SANDBOX__<API>__<KEY>). The same can be changed
at run time with POST /_sandbox/readings on each API's port: a JSON object of these keys
(keys left out take their default, so {} restores the defaults); GET /_sandbox/readings shows
those in force.";

/// Where to listen; `127.0.0.1:0` picks a free port.
#[derive(Clone, Debug)]
pub struct Listens {
    pub sharespine: String,
    pub computestacks: String,
    pub magento_api: String,
    pub magento_dashboard: String,
}

impl Listens {
    pub fn from_settings(s: &SandboxSettings) -> Self {
        Listens {
            sharespine: s.sharespine_listen.clone(),
            computestacks: s.computestacks_listen.clone(),
            magento_api: s.magento_api_listen.clone(),
            magento_dashboard: s.magento_dashboard_listen.clone(),
        }
    }
    pub fn ephemeral() -> Self {
        let any = "127.0.0.1:0".to_string();
        Listens {
            sharespine: any.clone(),
            computestacks: any.clone(),
            magento_api: any.clone(),
            magento_dashboard: any,
        }
    }
}

/// The running sandbox: each API's state (for assertions and knobs) and address.
pub struct Sandbox {
    pub sharespine: sharespine::Api,
    pub computestacks: computestacks::Api,
    pub magento_bi: magento_bi::Api,
    pub sharespine_addr: SocketAddr,
    pub computestacks_addr: SocketAddr,
    pub magento_api_addr: SocketAddr,
    pub magento_dashboard_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sandbox {
    /// Binds every listener and starts serving.
    pub async fn start(options: SandboxOptions, listens: Listens) -> std::io::Result<Sandbox> {
        let (stop, stopped) = watch::channel(false);
        let sharespine = sharespine::Api::new(options.sharespine.clone());
        let computestacks = computestacks::Api::new(options.computestacks.clone());
        let magento_bi = magento_bi::Api::new(options.magento_bi.clone());
        for knobs in [&sharespine.knobs, &computestacks.knobs, &magento_bi.knobs] {
            knobs.set_latency(options.latency);
        }
        let mut tasks = Vec::new();
        let sharespine_addr = spawn(
            &listens.sharespine,
            sharespine.router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        let computestacks_addr = spawn(
            &listens.computestacks,
            computestacks.router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        let magento_api_addr = spawn(
            &listens.magento_api,
            magento_bi.api_router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        let magento_dashboard_addr = spawn(
            &listens.magento_dashboard,
            magento_bi.dashboard_router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        Ok(Sandbox {
            sharespine,
            computestacks,
            magento_bi,
            sharespine_addr,
            computestacks_addr,
            magento_api_addr,
            magento_dashboard_addr,
            stop,
            tasks,
        })
    }

    pub fn sharespine_url(&self) -> String {
        format!("http://{}", self.sharespine_addr)
    }
    pub fn computestacks_url(&self) -> String {
        format!("http://{}", self.computestacks_addr)
    }
    pub fn magento_api_url(&self) -> String {
        format!("http://{}", self.magento_api_addr)
    }
    pub fn magento_dashboard_url(&self) -> String {
        format!("http://{}", self.magento_dashboard_addr)
    }

    /// Points `providers` at this sandbox.
    pub fn configure(&self, providers: &mut ProvidersSettings) {
        providers.sharespine.base_url = self.sharespine_url();
        providers.computestacks.base_url = self.computestacks_url();
        providers.magento_bi.api_base = self.magento_api_url();
        providers.magento_bi.dashboard_base = self.magento_dashboard_url();
    }

    /// Stops every listener and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn spawn(
    listen: &str,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error.message = %e, %addr, "sandbox listener failed");
        }
    }));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

    use super::*;
    use crate::config::{Settings, DEFAULT_TOML};

    /// Knob names, each with every value it accepts.
    type Knobs = Vec<(&'static str, Vec<&'static str>)>;

    /// Every knob of a `Readings` type and every value it accepts, read off its
    /// `Deserialize` impl (which names a struct's fields and an enum's
    /// variants, as config and `POST /_sandbox/readings` spell them), so a knob
    /// or value added later is checked without touching the tests.
    fn knobs<R: DeserializeOwned>() -> Knobs {
        let mut found = Vec::new();
        R::deserialize(Probe::Readings(&mut found))
            .expect("Readings is a struct of enums and bools");
        found
    }

    enum Probe<'a> {
        Readings(&'a mut Knobs),
        Knob(&'static str, &'a mut Knobs),
    }

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("a knob is an enum or a bool"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            let Probe::Readings(found) = self else {
                return Err(de::Error::custom("a knob is an enum or a bool"));
            };
            visitor.visit_map(Fields {
                fields: fields.iter(),
                key: "",
                found,
            })
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            let Probe::Knob(key, found) = self else {
                return Err(de::Error::custom("Readings is a struct"));
            };
            found.push((key, variants.to_vec()));
            visitor.visit_enum(variants[0].into_deserializer())
        }

        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            let Probe::Knob(key, found) = self else {
                return Err(de::Error::custom("Readings is a struct"));
            };
            found.push((key, vec!["false", "true"]));
            visitor.visit_bool(false)
        }

        serde::forward_to_deserialize_any! {
            i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct
            map identifier ignored_any
        }
    }

    struct Fields<'a> {
        fields: std::slice::Iter<'static, &'static str>,
        key: &'static str,
        found: &'a mut Knobs,
    }

    impl<'de> de::MapAccess<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn next_key_seed<K: de::DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Self::Error> {
            let Some(&key) = self.fields.next() else {
                return Ok(None);
            };
            self.key = key;
            seed.deserialize(key.into_deserializer()).map(Some)
        }

        fn next_value_seed<V: de::DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, Self::Error> {
            seed.deserialize(Probe::Knob(self.key, &mut *self.found))
        }
    }

    /// Whether `word` stands in `text` as a word of its own (`null` in
    /// `null | absent`, not in `nulls`).
    fn has_word(text: &str, word: &str) -> bool {
        let part = |c: char| c.is_ascii_alphanumeric() || c == '_';
        text.match_indices(word).any(|(at, _)| {
            !text[..at].ends_with(part) && !text[at + word.len()..].starts_with(part)
        })
    }

    /// `key`'s entry in a provider's help: its line and the lines continuing it.
    fn help_entry(help: &str, key: &str) -> Option<String> {
        let mut lines = help
            .lines()
            .skip_while(|l| !l.starts_with(&format!("  {key} ")));
        let first = lines.next()?;
        let rest = lines.take_while(|l| l.starts_with("   "));
        Some(
            std::iter::once(first)
                .chain(rest)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// `key`'s entry in `[sandbox.<table>]` of default.toml: the comment above
    /// it and its line.
    fn toml_entry(table: &str, key: &str) -> Option<String> {
        let header = format!("\n[sandbox.{table}]\n");
        let start = DEFAULT_TOML.find(&header)? + header.len();
        let body = &DEFAULT_TOML[start..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        let lines: Vec<&str> = body.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{key} = ")))?;
        let from = lines[..at]
            .iter()
            .rposition(|l| !l.starts_with('#'))
            .map_or(0, |i| i + 1);
        Some(lines[from..=at].join("\n"))
    }

    /// Each API's table, help, knobs and the knobs' defaults (as JSON).
    fn every_api() -> [(&'static str, &'static str, Knobs, serde_json::Value); 3] {
        fn api<R: DeserializeOwned + serde::Serialize + Default>(
            table: &'static str,
            help: &'static str,
        ) -> (&'static str, &'static str, Knobs, serde_json::Value) {
            let defaults = serde_json::to_value(R::default()).unwrap();
            (table, help, knobs::<R>(), defaults)
        }
        [
            api::<magento_bi::Readings>("magento_bi", magento_bi::READINGS_HELP),
            api::<computestacks::Readings>("computestacks", computestacks::READINGS_HELP),
            api::<sharespine::Readings>("sharespine", sharespine::READINGS_HELP),
        ]
    }

    #[test]
    fn every_reading_of_every_api_is_in_the_sandbox_help_and_default_toml() {
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("sandbox")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("at run time with POST /_sandbox/readings on each API's port"),
            "{help}"
        );
        for (table, api_help, knobs, defaults) in every_api() {
            assert!(
                help.contains(api_help),
                "sandbox --help has {table}'s readings"
            );
            assert!(
                help.contains(&format!("[sandbox.{table}]"))
                    && api_help.contains(&format!(
                        "ONBOARDING__SANDBOX__{}__<KEY>",
                        table.to_uppercase()
                    ))
                    && api_help.contains("POST /_sandbox/readings"),
                "sandbox --help says where {table}'s readings are set: {api_help}"
            );
            assert_eq!(
                knobs.len(),
                defaults.as_object().unwrap().len(),
                "{table}: {knobs:?}"
            );
            for (key, values) in knobs {
                let in_help = help_entry(api_help, key)
                    .unwrap_or_else(|| panic!("sandbox --help lists {table}.{key}"));
                let in_toml = toml_entry(table, key)
                    .unwrap_or_else(|| panic!("default.toml has {key} in [sandbox.{table}]"));
                let default = match &defaults[key] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert!(
                    has_word(&in_help, &format!("{default} (default")),
                    "sandbox --help says {table}.{key} is {default} by default: {in_help}"
                );
                assert!(
                    in_toml.ends_with(&format!("\n{key} = {}", defaults[key])),
                    "default.toml sets {table}.{key} to its default {default}: {in_toml}"
                );
                for value in values {
                    assert!(
                        has_word(&in_help, value),
                        "sandbox --help gives {value} for {table}.{key}: {in_help}"
                    );
                    if defaults[key].is_string() {
                        assert!(
                            in_toml.contains(&format!("\"{value}\"")),
                            "default.toml's comment gives \"{value}\" for {table}.{key}: {in_toml}"
                        );
                    }
                }
            }
        }
        let defaults = Settings::load(None).unwrap().sandbox;
        assert_eq!(defaults.magento_bi, magento_bi::Readings::default());
        assert_eq!(defaults.computestacks, computestacks::Readings::default());
        assert_eq!(defaults.sharespine, sharespine::Readings::default());
        let table = DEFAULT_TOML.find("\n[sandbox.").unwrap();
        let note = DEFAULT_TOML[..table]
            .rfind("New [sandbox] keys go ABOVE")
            .unwrap();
        assert!(
            DEFAULT_TOML.find("\n[sandbox]\n").unwrap() < note,
            "default.toml says where new [sandbox] keys go, above the readings' tables"
        );
    }

    #[test]
    fn readings_from_a_config_file_and_the_environment_reach_the_sandbox_options() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "[sandbox.computestacks]\nload_balancer_ip = \"late\"\nerrors = \"plain_text\"\n\
             [sandbox.sharespine]\nlists = \"data\"\n",
        )
        .unwrap();
        let env: HashMap<String, String> = [
            (
                "ONBOARDING__SANDBOX__COMPUTESTACKS__ORDER_IDS",
                "numeric_string",
            ),
            ("ONBOARDING__SANDBOX__SHARESPINE__EXPIRES", "unix_millis"),
            ("ONBOARDING__SANDBOX__SHARESPINE__EXTRA_FIELDS", "true"),
            ("ONBOARDING__SANDBOX__SHARESPINE__LISTS", "named"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = Settings::load_with_env(Some(file.path()), Some(env)).unwrap();
        let expected_computestacks = computestacks::Readings {
            load_balancer_ip: computestacks::LoadBalancerIp::Late,
            errors: computestacks::ErrorForm::PlainText,
            order_ids: computestacks::OrderIds::NumericString,
            ..Default::default()
        };
        let expected_sharespine = sharespine::Readings {
            expires: sharespine::Expires::UnixMillis,
            extra_fields: true,
            lists: sharespine::List::Named,
            ..Default::default()
        };
        assert_eq!(s.sandbox.computestacks, expected_computestacks);
        assert_eq!(
            s.sandbox.sharespine, expected_sharespine,
            "the environment over the file, the rest the defaults"
        );
        let options = SandboxOptions::from_settings(&s.sandbox, &s.providers);
        assert_eq!(options.computestacks.readings, expected_computestacks);
        assert_eq!(options.sharespine.readings, expected_sharespine);
        assert_eq!(options.magento_bi.readings, magento_bi::Readings::default());

        for (key, value, names) in [
            (
                "ONBOARDING__SANDBOX__SHARESPINE__EXPIRES",
                "tomorrow",
                "expires",
            ),
            (
                "ONBOARDING__SANDBOX__COMPUTESTACKS__ERORRS",
                "error",
                "erorrs",
            ),
        ] {
            let env = HashMap::from([(key.to_string(), value.to_string())]);
            let err = Settings::load_with_env(None, Some(env))
                .unwrap_err()
                .to_string();
            assert!(err.contains(names), "{key}={value}: {err}");
        }
    }
}
