//! Sample requests of each provider, and what the providers' own plans say
//! should happen to them (tests read the plan from the library rather than
//! restate it).

use onboarding_worker::config::Settings;
use onboarding_worker::domain::{Operation, ProviderId};
use onboarding_worker::engine::step::StepKey;
use serde_json::{json, Value};

/// A Sharespine onboarding request with `users` logins.
pub fn sharespine_request(
    request_id: &str,
    reference: &str,
    users: &[&str],
    login: Option<&str>,
) -> Value {
    let users: Vec<Value> = users
        .iter()
        .map(|l| json!({"login": l, "fullName": format!("User {l}"), "email": format!("{l}@example.test"), "permissions": [], "defaultLanguage": "swe"}))
        .collect();
    let mut input = json!({
        "tenant": {"customerReference": reference, "active": true, "fullName": "Test Store", "email": "owner@example.test",
                   "defaultLanguage": "swe", "languages": ["swe"], "options": []},
        "users": users,
    });
    if let Some(l) = login {
        input["login"] = json!({"login": l, "path": "/"});
    }
    json!({"request_id": request_id, "provider": "sharespine", "operation": "onboard", "input": input})
}

/// The steps named in `step_completed` events, in order.
pub fn steps_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "step_completed")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect()
}

/// A Magento BI onboarding request shaped like CONTRACT §4's example, for
/// `company`, whose MySQL connection carries `mysql_password`.
pub fn magento_request(request_id: &str, company: &str, mysql_password: &str) -> Value {
    json!({
        "request_id": request_id,
        "provider": "magento_bi",
        "operation": "onboard",
        "input": {
            "signup": {"tier": "T100", "company": company, "first_name": "Coco", "last_name": "Owner",
                       "email": "owner@example.test", "role": "csm",
                       "magento": {"customer_id": "cust-42", "subscription_id": "sub-42"}},
            "invite": {"email": "analyst@example.test", "first_name": "Ana", "last_name": "Lyst",
                       "force_create": 1,
                       "client_rights": {"admin": 1, "billing": 1, "readonly": 1, "technical": 0}},
            "client": {"name": company,
                       "properties": {"timezone": "America/New_York", "default_currency": "USD"}},
            "connection": {"name": "store", "display_name": "Store DB", "type": "mysql",
                           "credentials": {"password": mysql_password, "encryption_password": null},
                           "properties": {"host": "db.example.test", "port": "3306",
                                          "dbName": "magento_store", "username": "bi_reader"}},
            "dashboards": {"package": "magento1_rjql1", "database": "magento_store", "table_prefix": ""}
        }
    })
}

/// A ComputeStacks onboarding request: a user with `email` and `password`, an
/// API credential, and an order of one container of `resources` for `project`.
pub fn computestacks_request(
    request_id: &str,
    email: &str,
    password: &str,
    project: &str,
    resources: Value,
) -> Value {
    json!({
        "request_id": request_id,
        "provider": "computestacks",
        "operation": "onboard",
        "input": {
            "user": {"fname": "Ada", "lname": "Lovelace", "email": email,
                     "password": password, "password_confirmation": password,
                     "skip_email_confirm": true, "external_id": format!("crm-{request_id}")},
            "api_credential": {"name": "billing"},
            "order": {"project_name": project, "location_id": 1,
                      "containers": [{"image_id": 4, "resources": resources,
                                      "params": [], "domains": []}]}
        }
    })
}

/// The steps `request`'s provider plans for it, in order (the provider's own
/// `plan`, on the default settings); `Err` is its `invalid_request` message.
pub fn planned_steps(request: &Value) -> Result<Vec<StepKey>, String> {
    let settings = Settings::load(None).expect("default settings");
    let providers = onboarding_worker::providers::build_all(
        &settings.providers,
        &onboarding_worker::metrics::Metrics::new(),
    );
    let provider = request["provider"]
        .as_str()
        .and_then(ProviderId::parse)
        .ok_or_else(|| format!("no provider in {request}"))?;
    let operation = request["operation"]
        .as_str()
        .and_then(Operation::parse)
        .ok_or_else(|| format!("no operation in {request}"))?;
    providers[&provider].plan(operation, &request["input"])
}

/// The events a subscriber should see for a valid `request` that completes,
/// in order: `accepted`, one `step_completed:<step>` per planned step, `completed`.
pub fn expected_events(request: &Value) -> Vec<String> {
    let plan = planned_steps(request).expect("a valid request");
    std::iter::once("accepted".to_string())
        .chain(plan.iter().map(|s| format!("step_completed:{}", s.name)))
        .chain(std::iter::once("completed".to_string()))
        .collect()
}
