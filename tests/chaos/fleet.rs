//! The run's worker processes (the built binary): started and awaited ready,
//! one SIGKILLed and replaced at each kill moment, exits noticed, and every
//! process's `/metrics` scraped so that what a killed worker counted is kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::env::TestEnv;
use crate::support::processes::{free_port, readyz, worker_process_env};
use crate::support::prometheus::{metric_value, Samples};

/// A live worker process.
struct Proc {
    n: usize,
    child: Child,
    port: u16,
    /// The last `/metrics` text scraped from it.
    metrics: Option<String>,
}

/// The worker processes of a run: live ones, and what was scraped from the dead.
pub struct Fleet {
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    live: Vec<Proc>,
    /// (worker number, last metrics seen) of every process that is gone.
    gone: Vec<(usize, Option<String>)>,
    next_n: usize,
    http: reqwest::Client,
    /// Things that went wrong with the processes themselves.
    pub problems: Vec<String>,
}

impl Fleet {
    /// No process yet: workers on `env`'s broker and sandbox and on
    /// `ledger_url`, with short timeouts, retries and polls, logging to `log_dir`.
    pub fn new(env: &TestEnv, ledger_url: &str, log_dir: PathBuf) -> Fleet {
        let mut vars = worker_process_env(&env.settings, ledger_url, 1500);
        vars.push((
            "ONBOARDING__AMQP__URL".into(),
            env.settings.amqp.url.expose().to_string(),
        ));
        Fleet {
            env: vars,
            log_dir,
            live: Vec::new(),
            gone: Vec::new(),
            next_n: 1,
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap(),
            problems: Vec::new(),
        }
    }

    /// How many processes were started in all.
    pub fn started(&self) -> usize {
        self.next_n - 1
    }

    fn spawn(&mut self) -> Proc {
        let n = self.next_n;
        self.next_n += 1;
        let port = free_port();
        let log = std::fs::File::create(self.log_dir.join(format!("worker-{n}.log")))
            .expect("worker log file");
        let child = Command::new(env!("CARGO_BIN_EXE_onboarding-worker"))
            .arg("run")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("ONBOARDING__METRICS__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the built binary starts");
        Proc {
            n,
            child,
            port,
            metrics: None,
        }
    }

    async fn ready(&self, port: u16) -> bool {
        matches!(readyz(&self.http, port).await, Some((200, _)))
    }

    /// Starts `count` workers and waits until each says ready.
    pub async fn start(&mut self, count: usize) {
        for _ in 0..count {
            let mut p = self.spawn();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if self.ready(p.port).await {
                    break;
                }
                if let Ok(Some(status)) = p.child.try_wait() {
                    // Perhaps its port was taken meanwhile: once more with another.
                    eprintln!(
                        "worker {} exited at start ({status}); starting another",
                        p.n
                    );
                    p = self.spawn();
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {} not ready within 20 s; see {}",
                    p.n,
                    self.log_dir.display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.live.push(p);
        }
    }

    async fn scrape(http: &reqwest::Client, p: &mut Proc) {
        let url = format!("http://127.0.0.1:{}/metrics", p.port);
        if let Ok(r) = http.get(url).send().await {
            if let Ok(text) = r.text().await {
                if text.contains("onboarding_") {
                    p.metrics = Some(text);
                }
            }
        }
    }

    pub async fn scrape_all(&mut self) {
        let http = self.http.clone();
        futures::future::join_all(self.live.iter_mut().map(|p| Self::scrape(&http, p))).await;
    }

    /// A live worker that exited by itself is a failure; it is replaced.
    pub fn check_exits(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            if let Ok(Some(status)) = self.live[i].child.try_wait() {
                let p = self.live.remove(i);
                let log = format!("{}/worker-{}.log", self.log_dir.display(), p.n);
                if p.metrics.is_none() {
                    // Never served /metrics: most likely its port was taken
                    // between our pick and its bind. Not the worker's fault.
                    eprintln!("worker {} exited before serving ({status}); see {log}", p.n);
                } else {
                    self.problems.push(format!(
                        "worker {} exited on its own ({status}); see {log}",
                        p.n
                    ));
                }
                self.gone.push((p.n, p.metrics));
                let replacement = self.spawn();
                self.live.push(replacement);
            } else {
                i += 1;
            }
        }
    }

    /// Scrapes every worker, SIGKILLs one (a worker with a step in flight if
    /// there is one, so kills land mid-step more often) and starts a replacement.
    /// Returns the worker's number, pid and whether it had a step in flight.
    pub async fn kill_and_replace(&mut self, slot: usize) -> (usize, u32, bool) {
        self.scrape_all().await;
        let busy: Vec<usize> = (0..self.live.len())
            .filter(|&i| {
                self.live[i]
                    .metrics
                    .as_deref()
                    .and_then(|m| metric_value(m, "onboarding_steps_in_flight", &[]))
                    .unwrap_or(0.0)
                    > 0.0
            })
            .collect();
        let (slot, mid_step) = match busy.len() {
            0 => (slot % self.live.len(), false),
            n => (busy[slot % n], true),
        };
        let mut p = self.live.remove(slot);
        let pid = p.child.id();
        p.child.kill().expect("SIGKILL");
        let _ = p.child.wait();
        let n = p.n;
        self.gone.push((p.n, p.metrics));
        let replacement = self.spawn();
        self.live.push(replacement);
        (n, pid, mid_step)
    }

    /// Every process's last metrics text.
    pub fn all_metrics(&self) -> Vec<&str> {
        self.live
            .iter()
            .filter_map(|p| p.metrics.as_deref())
            .chain(self.gone.iter().filter_map(|(_, m)| m.as_deref()))
            .collect()
    }

    /// The sum over every process of the samples of `name` with `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.all_metrics()
            .iter()
            .filter_map(|m| metric_value(m, name, labels))
            .map(|v| v as u64)
            .sum()
    }

    /// The sum over every process of `name`, by the values of `label_keys`.
    pub fn by_labels(&self, name: &str, label_keys: &[&str]) -> BTreeMap<Vec<String>, f64> {
        let mut out = BTreeMap::new();
        for text in self.all_metrics() {
            for (key, value) in Samples::parse(text).by_labels(name, label_keys) {
                *out.entry(key).or_insert(0.0) += value;
            }
        }
        out
    }

    pub fn stop_all(&mut self) {
        for mut p in self.live.drain(..) {
            let _ = p.child.kill();
            let _ = p.child.wait();
            self.gone.push((p.n, p.metrics));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.live {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
