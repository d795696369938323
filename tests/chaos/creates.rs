//! What the sandbox holds for each request against what its end allows:
//! every create before the step it failed at exactly once, that step's at
//! most once, none after. The steps and their order are the provider's own
//! plan of the request; the sandbox side says which of them made something.

use std::collections::BTreeMap;

use crate::plan::{Planned, Shape};
use crate::support::env::TestEnv;
use crate::support::requests::planned_steps;

/// One create step of a request: how many the sandbox holds, how many may be.
pub struct Creates {
    pub provider: &'static str,
    pub step: String,
    pub label: String,
    pub found: usize,
    pub min: usize,
    pub max: usize,
}

/// The request's steps in order, as its provider plans them: (label, step),
/// where a step done once per entry of a list is labelled with its entry
/// (`create_user(anna)`).
fn plan_of(r: &Planned) -> Vec<(String, &'static str)> {
    let steps = planned_steps(&r.body)
        .unwrap_or_else(|e| panic!("{}: its provider plans nothing for it: {e}", r.id));
    steps
        .iter()
        .map(|key| {
            let label = match (key.index, &r.shape) {
                (Some(i), Shape::Sharespine { users, .. }) => {
                    format!("{}({})", key.name, users[i as usize])
                }
                (Some(i), _) => format!("{}#{i}", key.name),
                (None, _) => key.name.to_string(),
            };
            (label, key.name)
        })
        .collect()
}

/// What the sandbox holds for `shape`, per step that makes something, labelled
/// as [`plan_of`] labels them.
fn found_creates(env: &TestEnv, shape: &Shape) -> Vec<(String, usize)> {
    match shape {
        Shape::Sharespine {
            reference,
            users,
            login,
        } => {
            let tenants: Vec<_> = env
                .sandbox
                .sharespine
                .tenants()
                .into_iter()
                .filter(|t| &t.customer_reference == reference)
                .collect();
            let mut out = vec![("create_tenant".to_string(), tenants.len())];
            for u in users {
                let n = tenants
                    .iter()
                    .flat_map(|t| &t.users)
                    .filter(|x| &x.login == u)
                    .count();
                out.push((format!("create_user({u})"), n));
            }
            out.push((
                "create_connection".into(),
                tenants.iter().map(|t| t.connections.len()).sum(),
            ));
            if login.is_some() {
                out.push((
                    "create_login_url".into(),
                    tenants.iter().map(|t| t.login_urls.len()).sum(),
                ));
            }
            out
        }
        Shape::ComputeStacks {
            email,
            project,
            taken,
        } => {
            let cs = &env.sandbox.computestacks;
            let users: Vec<i64> = cs
                .users()
                .into_iter()
                .filter(|u| u.email.eq_ignore_ascii_case(email))
                .map(|u| u.id)
                .collect();
            let credentials = cs
                .api_credentials()
                .into_iter()
                .filter(|c| users.contains(&c.user_id))
                .count();
            let orders = cs
                .orders()
                .into_iter()
                .filter(|o| &o.project_name == project)
                .count();
            // A taken e-mail's user is the test's own, made before the run.
            let made = users.len() - usize::from(*taken).min(users.len());
            vec![
                ("create_user".into(), made),
                ("create_api_credential".into(), credentials),
                ("create_order".into(), orders),
            ]
        }
        Shape::MagentoBi { company } => {
            let m = &env.sandbox.magento_bi;
            let clients: Vec<i64> = m
                .clients()
                .into_iter()
                .filter(|c| c.signup["company"] == company.as_str())
                .map(|c| c.id)
                .collect();
            let ours = |client_id: i64| clients.contains(&client_id);
            vec![
                ("create_signup".into(), clients.len()),
                (
                    "invite_user".into(),
                    m.invites().iter().filter(|i| ours(i.client_id)).count(),
                ),
                (
                    "create_connection".into(),
                    m.connections()
                        .iter()
                        .filter(|c| ours(c.client_id) && !c.preexisting)
                        .count(),
                ),
                (
                    "test_connection".into(),
                    m.jobs()
                        .iter()
                        .filter(|j| ours(j.client_id) && !j.form.is_empty())
                        .count(),
                ),
                (
                    "create_dashboards".into(),
                    m.dashboards().iter().filter(|d| ours(d.client_id)).count(),
                ),
            ]
        }
    }
}

/// The creates of one request, with the bounds its end allows: every create
/// before the step it failed at exactly once, that step's at most once, none after.
pub fn creates_of(env: &TestEnv, r: &Planned, failed_at: Option<Option<&str>>) -> Vec<Creates> {
    let found = found_creates(env, &r.shape);
    let provider = r.shape.provider();
    if failed_at == Some(None) {
        // Failed before any step (an invalid request, which has no plan): nothing made.
        return found
            .into_iter()
            .map(|(label, n)| Creates {
                provider,
                step: label.split('(').next().unwrap_or_default().to_string(),
                label,
                found: n,
                min: 0,
                max: 0,
            })
            .collect();
    }
    let plan = plan_of(r);
    for (label, _) in &found {
        assert!(
            plan.iter().any(|(l, _)| l == label),
            "{}: the sandbox counts {label}, a step its provider's plan {plan:?} does not have",
            r.id
        );
    }
    let found: BTreeMap<String, usize> = found.into_iter().collect();
    let fail_index = failed_at.flatten().map(|step| {
        plan.iter()
            .position(|(_, s)| *s == step)
            .unwrap_or(plan.len())
    });
    let mut out = Vec::new();
    for (i, (label, step)) in plan.iter().enumerate() {
        // Only the steps that make something the sandbox counts.
        let Some(&n) = found.get(label) else {
            continue;
        };
        let (min, max) = match (fail_index, failed_at) {
            (None, _) => (1, 1),
            (Some(f), _) if i < f => (1, 1),
            // The step it failed at (for Sharespine's create_user, any of them).
            (Some(f), Some(Some(s))) if i == f || *step == s => (0, 1),
            _ => (0, 0),
        };
        out.push(Creates {
            provider,
            step: step.to_string(),
            label: label.clone(),
            found: n,
            min,
            max,
        });
    }
    out
}

/// (create endpoint, calls, resources the sandbox holds) per provider.
pub fn create_calls(env: &TestEnv) -> Vec<(String, u64, usize)> {
    let s = &env.sandbox;
    let ss = s.sharespine.knobs.all_calls();
    let cs = s.computestacks.knobs.all_calls();
    let mb = s.magento_bi.knobs.all_calls();
    let tenants = s.sharespine.tenants();
    let m = &s.magento_bi;
    let get = |calls: &BTreeMap<String, u64>, k: &str| calls.get(k).copied().unwrap_or(0);
    let row = |calls: &BTreeMap<String, u64>, k: &str, n: usize| (k.to_string(), get(calls, k), n);
    vec![
        row(&ss, "POST /reseller/tenant", tenants.len()),
        row(
            &ss,
            "POST /reseller/tenant/{code_name}/user",
            tenants.iter().map(|t| t.users.len()).sum(),
        ),
        row(
            &ss,
            "POST /reseller/tenant/{code_name}/connection",
            tenants.iter().map(|t| t.connections.len()).sum(),
        ),
        row(
            &ss,
            "POST /reseller/tenant/{code_name}/login/{login}",
            tenants.iter().map(|t| t.login_urls.len()).sum(),
        ),
        row(&cs, "POST /api/admin/users", s.computestacks.users().len()),
        row(
            &cs,
            "POST /api/users/{id}/api_credentials",
            s.computestacks.api_credentials().len(),
        ),
        row(&cs, "POST /api/orders", s.computestacks.orders().len()),
        row(&mb, "POST /v3/signups", m.clients().len()),
        row(&mb, "POST /v3/invites", m.invites().len()),
        row(
            &mb,
            "POST /v1/v2/clients/{client_id}/connections/input-connections",
            m.connections().iter().filter(|c| !c.preexisting).count(),
        ),
        row(
            &mb,
            "POST /v2/client/{client_id}/job",
            m.jobs().iter().filter(|j| !j.form.is_empty()).count(),
        ),
        row(
            &mb,
            "POST /v1/clients/{client_id}/autodash",
            m.dashboards().len(),
        ),
    ]
}
