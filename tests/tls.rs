//! Transport security (issue "Hostile input and misbehaving providers", part 5):
//! an `amqps://` broker URL works when its certificate is trusted through
//! `amqp.tls_ca_file`, and without that CA the connection is refused and the
//! worker stays alive and not ready. The TLS listener is Debian's stunnel4 in
//! front of the test broker (127.0.0.1:5672), with a CA and a certificate for
//! `localhost` made by the `openssl` CLI; both come from `bash scripts/services.sh`.
//! (Provider calls over https:// are covered by a unit test in src/providers/http.rs.)

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onboarding_worker::config::Secret;
use onboarding_worker::worker::Worker;
use tokio_util::sync::CancellationToken;

use crate::support::env::{captured_logs, test_settings, TestEnv};
use crate::support::processes::free_port;
use crate::support::requests::sharespine_request;
use crate::support::vhost::Vhost;

const BOUND: Duration = Duration::from_secs(90);

/// Fails the test if `test` does not finish within [`BOUND`].
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, test)
        .await
        .unwrap_or_else(|_| panic!("not finished within {BOUND:?}: something hangs"))
}

fn missing_tool(tool: &str, e: std::io::Error) -> ! {
    panic!("cannot run `{tool}` ({e}): install the test tools with `bash scripts/services.sh`")
}

fn run(cmd: &mut Command) {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().unwrap_or_else(|e| missing_tool(&tool, e));
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate for `localhost` signed by it, in `dir`.
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certificates(dir: &Path) -> Certificates {
    let p = |name: &str| dir.join(name);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=onboarding test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
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
    run(Command::new("openssl")
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
    Certificates {
        ca: p("ca.pem"),
        cert: p("server.pem"),
        key: p("server.key"),
    }
}

/// stunnel4 terminating TLS on a free port and forwarding to the broker; killed on drop.
struct TlsListener {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsListener {
    fn start() -> (TlsListener, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let certs = make_certificates(dir.path());
        let port = free_port();
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = notice\n\n[amqps]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:5672\ncert = {}\nkey = {}\n",
                certs.cert.display(),
                certs.key.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("stunnel.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("stunnel4")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| missing_tool("stunnel4", e));
        let mut listener = TlsListener {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = listener.child.try_wait().unwrap() {
                panic!(
                    "stunnel4 exited ({status}): {}",
                    std::fs::read_to_string(&listener.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "stunnel4 did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (listener, certs.ca)
    }

    /// The worker's broker URL through this listener, for `vhost`.
    fn amqps_url(&self, vhost: &str) -> String {
        format!("amqps://guest:guest@localhost:{}/{vhost}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_url_with_the_ca_configured_runs_an_onboarding() {
    bounded(async {
        let (tls, ca) = TlsListener::start();
        let mut env = TestEnv::prepare(|s| {
            let vhost = s.amqp.url.expose().rsplit('/').next().unwrap().to_string();
            s.amqp.url = Secret::new(tls.amqps_url(&vhost));
            s.amqp.tls_ca_file = ca.display().to_string();
        })
        .await;
        env.start_worker().await;
        assert!(env.worker().health.is_ready());
        env.publish(&sharespine_request(
            "tls-1",
            "tlsone",
            &["anna"],
            Some("anna"),
        ))
        .await;
        let done = env.final_event("tls-1", Duration::from_secs(30)).await;
        assert_eq!(done["event"], "completed", "{done:#}");
        assert!(
            tls.log().contains("accepted connection"),
            "the worker came in through the TLS listener: {}",
            tls.log()
        );
        env.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_url_without_the_ca_is_refused_and_the_worker_stays_up_not_ready() {
    bounded(async {
        let logs = captured_logs();
        let (tls, _ca) = TlsListener::start();
        let vhost = Vhost::new().await;
        let ledger = tempfile::tempdir().unwrap();
        let mut settings = test_settings(&vhost, ledger.path());
        settings.amqp.url = Secret::new(tls.amqps_url(&vhost.name));
        assert_eq!(settings.amqp.tls_ca_file, "", "the system's roots only");

        let stop = CancellationToken::new();
        let worker = Worker::start(&settings, stop.clone())
            .await
            .expect("the worker starts without its broker");
        let base = format!("http://{}", worker.metrics_addr);
        // Several connection attempts (reconnect back-off 100 ms .. 1 s).
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            assert!(!worker.health.is_ready(), "never ready without the CA");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let readyz = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(readyz.status(), 503, "/readyz says not ready");
        let healthz = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(healthz.status(), 200, "the process is alive");
        let printed = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let refusals: Vec<&str> = printed
            .lines()
            .filter(|l| l.contains("reconnecting") && l.contains("UnknownIssuer"))
            .collect();
        assert!(
            refusals.len() >= 2,
            "the refusals are logged with the certificate's fault, and retried: {printed}"
        );
        assert!(
            !refusals.iter().any(|l| l.contains("guest:guest")),
            "no credentials in the log: {refusals:?}"
        );
        // And it still stops cleanly.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), worker.stopped())
            .await
            .expect("the worker stops");
    })
    .await
}
