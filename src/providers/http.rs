//! The HTTP client every provider uses, and the one place that turns an HTTP
//! answer into a step's error class (CONTRACT §6): connection errors, timeouts,
//! 408, 425, 429 and 5xx are transient (honouring `Retry-After`); other 4xx and
//! 3xx are `rejected`. Bodies are read up to a limit, never logged; error
//! messages carry at most a short, sanitised `message`/`error` from the body.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use crate::config::CallSettings;
use crate::domain::{ProviderId, RetryReason};
use crate::engine::step::StepError;
use crate::metrics::Metrics;

/// A provider's HTTP client: timeouts, response size limit, metrics.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    provider: ProviderId,
    max_response_bytes: usize,
    metrics: Metrics,
}

/// A 2xx answer, read whole (within the size limit).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// Parses the body; a body that is not the expected JSON is a transient
    /// `bad_response` (providers do answer HTML error pages with 200 at times).
    pub fn json<T: DeserializeOwned>(&self, step: &str) -> Result<T, StepError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            StepError::Transient {
                reason: RetryReason::BadResponse,
                retry_after: None,
                http_status: Some(self.status),
                // serde's message names the missing field or the position, never the content.
                message: format!(
                    "{step}: unexpected response body ({} bytes): {}",
                    self.body.len(),
                    short_serde(&e)
                ),
            }
        })
    }
}

fn short_serde(e: &serde_json::Error) -> String {
    // serde_json quotes offending string values in some messages ("invalid value: string \"…\"");
    // keep the category and position only.
    let cat = match e.classify() {
        serde_json::error::Category::Io => "i/o error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    let msg = e.to_string();
    match msg.find("missing field") {
        Some(i) => msg[i..].split(" at line").next().unwrap_or(cat).to_string(),
        None => cat.to_string(),
    }
}

pub use crate::tls::read_ca_file;

impl HttpClient {
    /// `https://` is verified by rustls against the system's roots
    /// (rustls-platform-verifier: on Linux the OS store, /etc/ssl/certs) plus
    /// `calls.tls_ca_file` when set; an untrusted certificate fails the call as
    /// a transient connection error.
    pub fn new(provider: ProviderId, calls: &CallSettings, metrics: Metrics) -> Self {
        let mut builder = reqwest::Client::builder()
            .timeout(calls.timeout())
            .connect_timeout(calls.timeout().min(Duration::from_secs(10)))
            // A redirect is never part of these APIs; following one could send
            // credentials elsewhere. A 3xx is classified as rejected below.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30));
        if !calls.tls_ca_file.is_empty() {
            // Checked when the configuration was loaded (Settings::validate).
            let certs = read_ca_file(&calls.tls_ca_file).unwrap_or_else(|e| {
                panic!("providers.{}.calls.tls_ca_file: {e}", provider.as_str())
            });
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().expect("reqwest client builds with rustls");
        HttpClient {
            client,
            provider,
            max_response_bytes: calls.max_response_bytes,
            metrics,
        }
    }

    /// The underlying client, to build requests with.
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` for `step`; a 2xx comes back read whole, anything else as a classified error.
    pub async fn send(
        &self,
        step: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, StepError> {
        let started = Instant::now();
        let result = self.send_inner(step, request).await;
        let class = match &result {
            Ok(r) => status_class(r.status),
            Err(StepError::Transient {
                http_status: Some(s),
                ..
            })
            | Err(StepError::Rejected {
                http_status: Some(s),
                ..
            }) => status_class(*s),
            Err(StepError::Transient {
                reason: RetryReason::Timeout,
                ..
            }) => "timeout",
            Err(_) => "connection",
        };
        self.metrics
            .provider_http_requests_total
            .with_label_values(&[self.provider.as_str(), step, class])
            .inc();
        tracing::debug!(
            provider = self.provider.as_str(),
            step,
            status_class = class,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provider call"
        );
        result
    }

    async fn send_inner(
        &self,
        step: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, StepError> {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(step, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(len) = response.content_length() {
            if len as usize > self.max_response_bytes {
                return Err(too_large(step, status, self.max_response_bytes));
            }
        }
        // Read in chunks so a huge or endless body costs at most the limit.
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport_error(step, &e))?;
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(too_large(step, status, self.max_response_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let body = Bytes::from(body);
        classify(step, status, &headers, body)
    }
}

fn too_large(step: &str, status: u16, limit: usize) -> StepError {
    StepError::Transient {
        reason: RetryReason::BadResponse,
        retry_after: None,
        http_status: Some(status),
        message: format!("{step}: response larger than {limit} bytes"),
    }
}

fn transport_error(step: &str, e: &reqwest::Error) -> StepError {
    // reqwest's Display includes the URL; our URLs carry no credentials, but keep
    // messages to the class of failure anyway.
    let (reason, what) = if e.is_timeout() {
        (RetryReason::Timeout, "timed out".to_string())
    } else if e.is_connect() {
        let what = match refused_certificate(e) {
            Some(why) => format!("could not connect: {why}"),
            None => "could not connect".to_string(),
        };
        (RetryReason::Connection, what)
    } else if e.is_body() || e.is_decode() {
        (
            RetryReason::Connection,
            "connection broke while reading the response".to_string(),
        )
    } else {
        (RetryReason::Connection, "request failed".to_string())
    };
    StepError::Transient {
        reason,
        retry_after: None,
        http_status: None,
        message: format!("{step}: {what}"),
    }
}

/// rustls's reason for refusing the server's certificate ("invalid peer
/// certificate: UnknownIssuer"), so an operator sees that `tls_ca_file` is
/// missing rather than a bare "could not connect". Never carries the URL.
fn refused_certificate(e: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        let text = err.to_string();
        if text.starts_with("invalid peer certificate") {
            return Some(text.chars().filter(|c| !c.is_control()).take(200).collect());
        }
        source = err.source();
    }
    None
}

/// `2xx`, `4xx`... for metric labels.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The contract's classification of an HTTP status, in one place.
pub fn classify(
    step: &str,
    status: u16,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, StepError> {
    match status {
        200..=299 => Ok(Response {
            status,
            headers: headers.clone(),
            body,
        }),
        408 | 425 | 429 | 500..=599 => {
            let reason = if status == 429 {
                RetryReason::RateLimited
            } else {
                RetryReason::ServerError
            };
            Err(StepError::Transient {
                reason,
                retry_after: retry_after(headers),
                http_status: Some(status),
                message: format!("{step}: provider answered {status}{}", detail_suffix(&body)),
            })
        }
        _ => Err(StepError::Rejected {
            http_status: Some(status),
            message: format!(
                "provider rejected {step}: {}",
                detail(&body).unwrap_or_else(|| format!("HTTP {status}"))
            ),
        }),
    }
}

fn detail_suffix(body: &[u8]) -> String {
    detail(body).map(|d| format!(": {d}")).unwrap_or_default()
}

/// A short human reason from an error body: `message`, `error`, `errors`... as
/// providers spell it; at most 200 printable characters.
pub fn detail(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    fn text(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Array(items) => {
                let parts: Vec<String> = items.iter().filter_map(text).collect();
                (!parts.is_empty()).then(|| parts.join("; "))
            }
            serde_json::Value::Object(map) => {
                for key in ["message", "error", "errors", "detail", "title"] {
                    if let Some(t) = map.get(key).and_then(text) {
                        return Some(t);
                    }
                }
                // Rails style: {"email": ["has already been taken"]}
                let parts: Vec<String> = map
                    .iter()
                    .filter_map(|(k, v)| text(v).map(|t| format!("{k} {t}")))
                    .collect();
                (!parts.is_empty()).then(|| parts.join("; "))
            }
            _ => None,
        }
    }
    let t = text(&v)?;
    let clean: String = t.chars().filter(|c| !c.is_control()).take(200).collect();
    Some(clean)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when =
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let delta = when - time::OffsetDateTime::now_utc();
    Some(Duration::from_millis(
        delta.whole_milliseconds().clamp(0, 24 * 3600 * 1000) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, body: &str) -> Result<Response, StepError> {
        classify(
            "create_user",
            status,
            &HeaderMap::new(),
            Bytes::from(body.to_string()),
        )
    }

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        for (status, transient, why) in [
            (408, true, "request timeout"),
            (425, true, "too early"),
            (429, true, "rate limited"),
            (500, true, "server error"),
            (503, true, "unavailable"),
            (400, false, "bad request"),
            (401, false, "unauthorized"),
            (404, false, "not found"),
            (422, false, "unprocessable"),
            (302, false, "a redirect is never followed"),
        ] {
            let err = check(status, "").unwrap_err();
            assert_eq!(
                matches!(err, StepError::Transient { .. }),
                transient,
                "{why} ({status})"
            );
            assert_eq!(err.http_status(), Some(status), "{why}");
        }
        assert!(check(201, "{}").is_ok());
    }

    #[test]
    fn rejection_message_quotes_the_providers_reason_briefly() {
        let err = check(422, r#"{"message":"login already exists"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider rejected create_user: login already exists"
        );
        let err = check(422, r#"{"errors":{"email":["has already been taken"]}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider rejected create_user: email has already been taken"
        );
        let err = check(404, "<html>nope</html>").unwrap_err();
        assert_eq!(err.to_string(), "provider rejected create_user: HTTP 404");
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(5000));
        assert!(check(400, &long).unwrap_err().to_string().len() < 260);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_date() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let err = classify("s", 429, &h, Bytes::new()).unwrap_err();
        assert!(
            matches!(err, StepError::Transient { retry_after: Some(d), reason: RetryReason::RateLimited, .. } if d == Duration::from_secs(3))
        );
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
    }

    /// Runs `cmd`, failing the test with a pointer to scripts/services.sh when
    /// the tool is missing.
    fn run(cmd: &mut std::process::Command) {
        let tool = cmd.get_program().to_string_lossy().into_owned();
        let out = cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run `{tool}` ({e}): install the test tools with `bash scripts/services.sh`"
            )
        });
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA and a certificate for `localhost` signed by it, made with the
    /// openssl CLI in `dir`: (ca.pem, server.pem, server.key).
    fn make_certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
        let p = |name: &str| dir.join(name);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(std::process::Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "2", "-subj", "/CN=onboarding test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        run(std::process::Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")));
        std::fs::write(
            p("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(std::process::Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("server.ext"))
            .arg("-out")
            .arg(p("server.pem")));
        [p("ca.pem"), p("server.pem"), p("server.key")]
    }

    /// `openssl s_server -www` (answers any GET with 200 and an HTML page), killed on drop.
    struct TlsServer {
        child: std::process::Child,
        port: u16,
    }

    impl TlsServer {
        fn start(cert: &std::path::Path, key: &std::path::Path) -> TlsServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("openssl")
                .args(["s_server", "-quiet", "-www", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(cert)
                .arg("-key")
                .arg(key)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run `openssl s_server` ({e}): install the test tools with `bash scripts/services.sh`")
                });
            let mut server = TlsServer { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    server.child.try_wait().unwrap().is_none(),
                    "openssl s_server exited"
                );
                assert!(Instant::now() < deadline, "openssl s_server did not listen");
                std::thread::sleep(Duration::from_millis(50));
            }
            server
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test]
    async fn https_certificates_are_verified_and_a_configured_ca_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key] = make_certificates(dir.path());
        let server = TlsServer::start(&cert, &key);
        let url = format!("https://localhost:{}/", server.port);
        let mut calls = crate::config::Settings::load(None)
            .unwrap()
            .providers
            .sharespine
            .calls;
        calls.timeout_ms = 5000;

        // Not signed by anything the system trusts: refused, as a transient connection error.
        let client = HttpClient::new(ProviderId::Sharespine, &calls, Metrics::new());
        let err = client
            .send("probe", client.inner().get(&url))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                StepError::Transient {
                    reason: RetryReason::Connection,
                    http_status: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "probe: could not connect: invalid peer certificate: UnknownIssuer"
        );

        // With the test's CA configured, the same server is accepted.
        calls.tls_ca_file = ca.display().to_string();
        let client = HttpClient::new(ProviderId::Sharespine, &calls, Metrics::new());
        let ok = client
            .send("probe", client.inner().get(&url))
            .await
            .expect("trusted through tls_ca_file");
        assert_eq!(ok.status, 200);

        // A CA file that is not PEM is refused when the configuration is read.
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = read_ca_file(&junk.display().to_string()).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_a_transient_bad_response_without_its_content() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Tenant {
            #[serde(rename = "codeName")]
            code_name: String,
        }
        let r = check(200, r#"{"secretish":"hunter2"}"#).unwrap();
        let err = r.json::<Tenant>("create_tenant").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            StepError::Transient {
                reason: RetryReason::BadResponse,
                ..
            }
        ));
        assert!(msg.contains("missing field `codeName`"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let r = check(200, "<html>maintenance</html>").unwrap();
        assert!(r
            .json::<Tenant>("create_tenant")
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
    }
}
