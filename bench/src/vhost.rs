//! A fresh vhost for each part, made and deleted through the broker's
//! management API, so no part sees another's queues.

use anyhow::{bail, Context};
use onboarding_worker::broker::admin::Admin;
use serde_json::json;

/// A fresh vhost; [`Vhost::delete`] removes it with everything in it.
pub struct Vhost {
    name: String,
    base: String,
    user: String,
    pass: String,
    http: reqwest::Client,
}

impl Vhost {
    /// Makes a vhost through the management API at `mgmt`
    /// (`http://user:pass@host:port`) and gives its user every permission there.
    pub async fn new(mgmt: &str) -> anyhow::Result<Vhost> {
        let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let http = reqwest::Client::new();
        let url = url::Url::parse(mgmt)?;
        let base = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(15672)
        );
        let (user, pass) = (
            url.username().to_string(),
            url.password().unwrap_or("").to_string(),
        );
        let r = http
            .put(format!("{base}/api/vhosts/{name}"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({}))
            .send()
            .await;
        let r = r.context(
            "the broker's management API (bash scripts/services.sh starts RabbitMQ with it)",
        )?;
        if !r.status().is_success() {
            bail!("creating vhost {name}: {}", r.status());
        }
        http.put(format!("{base}/api/permissions/{name}/{user}"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?
            .error_for_status()?;
        Ok(Vhost {
            name,
            base,
            user,
            pass,
            http,
        })
    }

    pub fn amqp(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    pub async fn delete(self) {
        let _ = self
            .http
            .delete(format!("{}/api/vhosts/{}", self.base, self.name))
            .basic_auth(&self.user, Some(&self.pass))
            .send()
            .await;
    }
}

/// Messages in the worker's delay queues now.
pub async fn delay_depth(admin: &Admin) -> anyhow::Result<u32> {
    use onboarding_worker::broker::topology::{delay_queue, DELAY_TIERS_MS};
    let mut total = 0;
    for ms in DELAY_TIERS_MS {
        total += admin.queue_depth(&delay_queue(*ms)).await?;
    }
    Ok(total)
}
