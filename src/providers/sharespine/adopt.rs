//! How a create recognises what an interrupted earlier attempt of the same
//! request made, to adopt it (`repeat_detected`) instead of creating another
//! (the module doc's "Recognising our own earlier create").

use serde_json::{json, Map, Value};

use crate::engine::step::{StepDone, StepError};

use super::{wire, Sharespine, CREATE_TENANT};

impl Sharespine {
    /// The tenant an interrupted `create_tenant` of this request may have made.
    pub(super) async fn earlier_tenant(
        &self,
        tenant: &Value,
    ) -> Result<Option<StepDone>, StepError> {
        let Some(listed) = self
            .lookup(CREATE_TENANT, &["reseller", "tenant"], wire::tenants)
            .await?
        else {
            return Ok(None);
        };
        let sent = tenant.as_object().cloned().unwrap_or_default();
        let reference = sent
            .get("customerReference")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_lowercase();
        let candidates: Vec<&wire::ListedTenant> = listed
            .iter()
            .filter(|t| {
                t.customer_reference
                    .as_deref()
                    .is_some_and(|r| r.to_lowercase() == reference)
            })
            .filter(|t| {
                ["fullName", "email", "active", "defaultLanguage"]
                    .iter()
                    .all(|k| match (sent.get(*k), t.fields.get(*k)) {
                        (Some(a), Some(b)) if !a.is_null() && !b.is_null() => a == b,
                        _ => true,
                    })
            })
            .collect();
        match candidates.as_slice() {
            [] => Ok(None),
            [ours] => {
                let mut done = StepDone::default().with("code_name", ours.code_name.as_str());
                done.repeat_detected = true;
                Ok(Some(done))
            }
            many => Err(StepError::rejected(
                None,
                format!(
                    "provider rejected create_tenant: an earlier attempt of this request may \
                     have created the tenant, and {} tenants carry its customerReference; not \
                     creating another, nor adopting one",
                    many.len()
                ),
            )),
        }
    }
}

/// Could the listed connection `shown` be the one made from `sent`? Its `type`
/// (`api` when not sent, as the API defaults it) and `name` must not differ
/// where both are known.
pub(super) fn could_be(sent: &Value, shown: &Map<String, Value>) -> bool {
    let sent_type = sent
        .get("type")
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| json!("api"));
    let sent_name = sent.get("name").cloned().unwrap_or(Value::Null);
    [("type", sent_type), ("name", sent_name)]
        .iter()
        .all(|(key, sent)| match shown.get(*key) {
            Some(shown) if !shown.is_null() && !sent.is_null() => shown == sent,
            _ => true,
        })
}

/// Does a rejection's reason say the thing already exists (in any of the
/// words APIs use for it)?
pub(super) fn says_exists(message: &str) -> bool {
    let m = message.to_lowercase();
    (m.contains("exist") && !m.contains("not exist") && !m.contains("no such"))
        || m.contains("taken")
        || m.contains("duplicate")
}
