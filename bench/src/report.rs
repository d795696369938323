//! The figures of a run: a table on stdout (figure, value, target, met) and,
//! with `--json`, one JSON object of every figure as the last line. Keys of
//! the SQLite runs are unprefixed (what CI has always read); the PostgreSQL
//! runs' keys start with `postgres_`.

use serde_json::{json, Map, Value};

use crate::ledgers::LedgerKind;
use crate::parts::ceiling::CeilingPart;
use crate::parts::durability::DurabilityPart;
use crate::parts::scaleout::ScaleoutPart;
use crate::parts::throughput::{ThroughputPart, HOPS_PER_ONBOARDING};
use crate::parts::waiting::WaitingPart;

/// What every part that ran found.
pub struct Results {
    pub ceiling: CeilingPart,
    /// One per ledger, in `--ledger` order.
    pub throughput: Vec<ThroughputPart>,
    /// `None` with `--throughput-only`.
    pub waiting: Option<WaitingPart>,
    pub scaleout: Option<ScaleoutPart>,
    pub durability: Option<DurabilityPart>,
}

struct Row {
    label: String,
    value: String,
    target: String,
    met: String,
}

#[derive(Default)]
struct Report {
    figures: Map<String, Value>,
    rows: Vec<Row>,
}

impl Report {
    /// A figure under `key`, shown as `label`, with its target and whether it is met.
    fn add(&mut self, key: &str, label: &str, value: f64, target: Option<(&str, bool)>) {
        self.figures.insert(key.into(), json!(value));
        let (target, met) = match target {
            Some((t, m)) => (t.to_string(), if m { "yes" } else { "NO" }.to_string()),
            None => (String::new(), String::new()),
        };
        // Small figures (CPU ms per step) need a third decimal.
        let value = if value.abs() < 1.0 {
            format!("{value:.3}")
        } else {
            format!("{value:.2}")
        };
        self.rows.push(Row {
            label: label.into(),
            value,
            target,
            met,
        });
    }

    fn add_some(&mut self, key: &str, label: &str, value: Option<f64>) {
        if let Some(v) = value {
            self.add(key, label, v, None);
        }
    }

    fn print(self, json: bool) {
        println!(
            "{:<52} {:>12} {:>16} {:>5}",
            "FIGURE", "VALUE", "TARGET", "MET"
        );
        for r in &self.rows {
            println!(
                "{:<52} {:>12} {:>16} {:>5}",
                r.label, r.value, r.target, r.met
            );
        }
        if json {
            println!("{}", Value::Object(self.figures));
        }
    }

    /// The waiting part's figures.
    fn add_waiting(&mut self, w: &WaitingPart) {
        let rss = w.rss_after_mb - w.rss_before_mb;
        let tasks = w.tasks_after - w.tasks_before;
        self.add(
            "waiting_onboardings",
            "onboardings waiting on jobs",
            w.waiting as f64,
            None,
        );
        self.add(
            "waiting_in_delay_queues",
            "messages in delay queues then",
            w.in_delay_queues as f64,
            None,
        );
        self.add(
            "waiting_rss_delta_mb",
            "RSS growth while they wait (MB)",
            rss,
            Some(("< 20", rss < 20.0)),
        );
        self.add(
            "waiting_tasks_delta",
            "alive tasks growth while they wait",
            tasks as f64,
            Some(("flat (≤ 5)", tasks <= 5)),
        );
    }
}

/// `--waiting-only`: the waiting part's figures alone.
pub fn print_waiting(w: &WaitingPart, json: bool) {
    let mut r = Report::default();
    r.add_waiting(w);
    r.print(json);
}

impl Results {
    /// Prints the table, then the JSON object if `json`.
    pub fn print(&self, json: bool) {
        self.report().print(json);
    }

    fn report(&self) -> Report {
        let mut r = Report::default();
        let c = &self.ceiling;
        r.add(
            "ceiling_steps_per_s",
            "broker ceiling (steps/s)",
            c.steps_per_s,
            None,
        );
        r.add_some(
            "cpu_ms_per_step_broker_ceiling",
            "broker ceiling: broker CPU per step (ms)",
            c.broker_cpu_ms_per_step,
        );
        r.add(
            "ceiling_hop_ms",
            "ceiling: one hop, one chain (ms, p50)",
            c.hop_ms,
            None,
        );
        let budget = c.hop_ms * HOPS_PER_ONBOARDING as f64;
        r.add(
            "latency_budget_ms",
            "budget: hop × (steps + 1) (ms)",
            budget,
            None,
        );
        for t in &self.throughput {
            self.add_throughput(&mut r, t, budget);
        }
        if let Some(w) = &self.waiting {
            r.add_waiting(w);
        }
        if let Some(s) = &self.scaleout {
            let ratio = s.two / s.one;
            r.add(
                "scaleout_one_steps_per_s",
                "scale-out: one worker (steps/s)",
                s.one,
                None,
            );
            r.add(
                "scaleout_two_steps_per_s",
                "scale-out: two workers (steps/s)",
                s.two,
                None,
            );
            r.add(
                "scaleout_ratio",
                "two workers / one",
                ratio,
                Some(("≥ 1.8", ratio >= 1.8)),
            );
        }
        if let Some(d) = &self.durability {
            r.add(
                "sqlite_commit_normal_ms",
                "SQLite commit, synchronous NORMAL (ms)",
                d.normal_ms,
                None,
            );
            r.add(
                "sqlite_commit_full_ms",
                "SQLite commit, synchronous FULL (ms)",
                d.full_ms,
                None,
            );
            r.add(
                "sqlite_full_cost",
                "FULL / NORMAL per commit",
                d.full_ms / d.normal_ms,
                None,
            );
        }
        r
    }

    /// One ledger's throughput, CPU and latency figures.
    fn add_throughput(&self, r: &mut Report, t: &ThroughputPart, budget: f64) {
        let (p, name) = (t.ledger.key_prefix(), t.ledger.name());
        let ratio = t.steps_per_s / self.ceiling.steps_per_s;
        // Issue 16's targets: half the ceiling on SQLite, 0.4 of it on
        // PostgreSQL (a network round trip per statement).
        let target = match t.ledger {
            LedgerKind::Postgres => 0.4,
            LedgerKind::Sqlite => 0.5,
        };
        r.add(
            &format!("{p}worker_steps_per_s"),
            &format!("{name}: worker throughput (steps/s)"),
            t.steps_per_s,
            None,
        );
        r.add(
            &format!("{p}worker_onboardings_per_s"),
            &format!("{name}: worker throughput (onboardings/s)"),
            t.onboardings_per_s,
            None,
        );
        r.add(
            &format!("{p}ratio"),
            &format!("{name}: worker / ceiling"),
            ratio,
            Some((
                if target == 0.5 { "≥ 0.5" } else { "≥ 0.4" },
                ratio >= target,
            )),
        );
        for (who, cpu) in [
            ("worker", t.cpu.worker),
            ("broker", t.cpu.broker),
            ("sandbox", t.cpu.sandbox),
            ("bench", t.cpu.bench),
        ] {
            r.add_some(
                &format!("{p}cpu_ms_per_step_{who}"),
                &format!("{name}: {who} CPU per step (ms)"),
                cpu,
            );
        }
        r.add(
            &format!("{p}latency_p50_ms"),
            &format!("{name}: one onboarding at a time: p50 (ms)"),
            t.latency_p50_ms,
            Some(("≤ 1.3 × budget", t.latency_p50_ms <= 1.3 * budget)),
        );
        r.add(
            &format!("{p}latency_p99_ms"),
            &format!("{name}: one onboarding at a time: p99 (ms)"),
            t.latency_p99_ms,
            None,
        );
    }
}
