//! A worker process's `/metrics`, read from outside: gauges, and where its
//! step work spends its time (the mean of each timed phase between two
//! scrapes). The `prometheus` crate writes this text but does not read it;
//! the few series read here need only its simple lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;

/// One sample line: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{k="v",...} value` lines; others (comments, blanks) are skipped.
/// Label values of the series read here hold no quotes or commas.
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every pair of `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// A gauge's value (summed over its series) from a worker's `/metrics`.
pub async fn gauge(url: &str, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(sum(&samples(&text), name, &[]))
}

/// Waits until a worker's gauge reaches `at_least` (it is sampled every 5 s).
pub async fn wait_gauge(url: &str, name: &str, at_least: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Ok(v) = gauge(url, name).await {
            if v >= at_least {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{name} did not reach {at_least}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One timed phase of the worker's step work: a histogram's series.
struct Phase {
    label: String,
    histogram: &'static str,
    labels: Vec<(&'static str, &'static str)>,
}

fn phase_list() -> Vec<Phase> {
    let mut out = Vec::new();
    for op in ["accept", "claim", "record_step", "advance", "finish"] {
        out.push(Phase {
            label: format!("ledger {op}"),
            histogram: "onboarding_ledger_seconds",
            labels: vec![("op", op)],
        });
    }
    for what in ["step", "event"] {
        out.push(Phase {
            label: format!("publish {what} (to confirm)"),
            histogram: "onboarding_publish_seconds",
            labels: vec![("what", what)],
        });
    }
    for step in [
        "create_tenant",
        "create_user",
        "create_connection",
        "create_login_url",
    ] {
        out.push(Phase {
            label: format!("provider call {step}"),
            histogram: "onboarding_step_duration_seconds",
            labels: vec![("provider", "sharespine"), ("step", step)],
        });
    }
    out
}

/// (label, sum of seconds, count) of every timed phase at one scrape.
pub struct Phases(Vec<(String, f64, f64)>);

impl Phases {
    /// Scrapes the worker's `/metrics` at `url`.
    pub async fn scrape(url: &str) -> anyhow::Result<Phases> {
        let text = reqwest::get(url).await?.error_for_status()?.text().await?;
        let samples = samples(&text);
        Ok(Phases(
            phase_list()
                .into_iter()
                .map(|p| {
                    let s = sum(&samples, &format!("{}_sum", p.histogram), &p.labels);
                    let c = sum(&samples, &format!("{}_count", p.histogram), &p.labels);
                    (p.label, s, c)
                })
                .collect(),
        ))
    }

    /// Prints the mean milliseconds per operation of each phase since `before`.
    pub fn print_since(&self, before: &Phases, title: &str) {
        eprintln!("      where the time goes ({title}), mean per operation:");
        for ((name, s0, c0), (_, s1, c1)) in before.0.iter().zip(&self.0) {
            if c1 > c0 {
                eprintln!(
                    "        {name:<34} {:>8.3} ms  × {}",
                    (s1 - s0) * 1000.0 / (c1 - c0),
                    c1 - c0
                );
            }
        }
    }
}
