//! `onboarding-worker status`: where one onboarding stands, from the ledger.
//! Private values (credentials) are never shown.

use serde_json::{json, Value};

use crate::ledger::{RequestRecord, Status};

fn ms_to_rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The first step of `plan` (the provider's, for this request) not yet
/// recorded: where a running request stands when it is not waiting.
pub fn next_step(r: &RequestRecord, plan: &[crate::engine::step::StepKey]) -> Option<String> {
    plan.iter()
        .find(|s| !r.done_steps.contains(&s.ledger_key()))
        .map(|s| s.name.to_string())
}

/// A table for people, or one JSON object with `--json`. `next` is the step a
/// running request is at (see [`next_step`]); a waiting one names its own.
pub fn render(r: &RequestRecord, next: Option<String>, as_json: bool) -> String {
    let mut r = r.clone();
    if r.status == Status::Running && r.waiting_until_ms.is_none() {
        r.current_step = next.or(r.current_step);
    }
    let r = &r;
    let final_event: Option<Value> = r
        .final_event
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let error = final_event
        .as_ref()
        .and_then(|e| e.get("error"))
        .cloned()
        .filter(|e| !e.is_null());
    let waiting = r.waiting_until_ms.filter(|_| r.status == Status::Running);
    if as_json {
        return json!({
            "request_id": r.request_id,
            "provider": r.provider.as_str(),
            "operation": r.operation.as_str(),
            "status": r.status.as_str(),
            "steps_done": r.done_steps,
            "outputs": r.outputs,
            "current_step": if r.status == Status::Completed { None } else { r.current_step.clone() },
            "waiting_until": waiting.map(ms_to_rfc3339),
            "error": error,
            "accepted_at": ms_to_rfc3339(r.accepted_at_ms),
            "updated_at": ms_to_rfc3339(r.updated_at_ms),
        })
        .to_string();
    }
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
    line("request_id", r.request_id.clone());
    line(
        "provider",
        format!("{} / {}", r.provider.as_str(), r.operation.as_str()),
    );
    line("status", r.status.as_str().to_string());
    line("accepted_at", ms_to_rfc3339(r.accepted_at_ms));
    line("updated_at", ms_to_rfc3339(r.updated_at_ms));
    line(
        "steps done",
        if r.done_steps.is_empty() {
            "none".into()
        } else {
            r.done_steps.join(", ")
        },
    );
    match (r.status, &r.current_step, waiting) {
        (Status::Running, Some(step), Some(until)) => {
            line("waiting", format!("{step} until {}", ms_to_rfc3339(until)))
        }
        (Status::Running, Some(step), None) => line("next step", step.clone()),
        _ => {}
    }
    if let Some(e) = error {
        let text = |k: &str| {
            e.get(k)
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .unwrap_or_default()
        };
        line(
            "failed",
            format!(
                "{} at {} (HTTP {}): {}",
                text("kind"),
                text("step"),
                text("http_status"),
                text("message")
            ),
        );
    }
    out.push_str("outputs\n");
    for (k, v) in &r.outputs {
        out.push_str(&format!("  {k:<20} {}\n", v));
    }
    out.trim_end().to_string()
}
