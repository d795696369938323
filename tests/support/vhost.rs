//! A RabbitMQ vhost of a test's own (created with full rights for `guest`,
//! deleted when dropped), and what the management API shows and changes in it.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::management::{broker_must_be_up, Answer, Management, Take};

/// A vhost of its own, deleted when dropped.
pub struct Vhost {
    pub name: String,
    api: Management,
}

impl Vhost {
    pub async fn new() -> Vhost {
        broker_must_be_up();
        let name = format!("test-{}", uuid::Uuid::new_v4().simple());
        let api = Management::new();
        api.create_vhost(&name).await;
        Vhost { name, api }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:5672/{}", self.name)
    }

    /// A queue as the management API shows it; `None` when there is none.
    pub async fn queue(&self, queue: &str) -> Option<Value> {
        let answer = self
            .api
            .call(Method::GET, &["queues", &self.name, queue], None)
            .await;
        match answer.status {
            404 => None,
            _ => Some(answer.expect_success(&format!("queue {queue}")).json()),
        }
    }

    /// (ready, unacknowledged) message counts of a queue (sampled by the broker).
    pub async fn queue_counts(&self, queue: &str) -> (i64, i64) {
        let q = self
            .queue(queue)
            .await
            .unwrap_or_else(|| panic!("queue {queue} exists"));
        (
            q["messages_ready"].as_i64().unwrap_or(0),
            q["messages_unacknowledged"].as_i64().unwrap_or(0),
        )
    }

    /// The worker's queues (requests, steps, delays) holding ready or
    /// unacknowledged messages, as "name (ready N, unacked M)".
    pub async fn busy_queues(&self) -> Vec<String> {
        let answer = match self
            .api
            .try_call(Method::GET, &["queues", &self.name], None)
            .await
        {
            Ok(a) if a.status == 200 => a,
            Ok(a) => return vec![format!("(management API answered {})", a.status)],
            Err(e) => return vec![format!("(management API: {e})")],
        };
        let queues: Vec<Value> = serde_json::from_str(&answer.body).unwrap_or_default();
        queues
            .iter()
            .filter(|q| {
                let name = q["name"].as_str().unwrap_or_default();
                name == "onboarding.requests"
                    || name.starts_with("onboarding.steps.")
                    || name.starts_with("onboarding.delay.")
            })
            .filter_map(|q| {
                let ready = q["messages_ready"].as_i64().unwrap_or(0);
                let unacked = q["messages_unacknowledged"].as_i64().unwrap_or(0);
                (ready != 0 || unacked != 0).then(|| {
                    format!(
                        "{} (ready {ready}, unacked {unacked})",
                        q["name"].as_str().unwrap_or("?")
                    )
                })
            })
            .collect()
    }

    /// Declares `queue` with the management API's queue `definition`
    /// (`durable`, `arguments`).
    pub async fn declare_queue(&self, queue: &str, definition: Value) {
        self.api
            .call(
                Method::PUT,
                &["queues", &self.name, queue],
                Some(&definition),
            )
            .await
            .expect_success(&format!("declare {queue}"));
    }

    pub async fn delete_queue(&self, queue: &str) {
        self.api
            .call(Method::DELETE, &["queues", &self.name, queue], None)
            .await
            .expect_success(&format!("delete the queue {queue}"));
    }

    /// Binds `queue` to `exchange` with `routing_key`.
    pub async fn bind(&self, exchange: &str, queue: &str, routing_key: &str) {
        self.api
            .call(
                Method::POST,
                &["bindings", &self.name, "e", exchange, "q", queue],
                Some(&json!({ "routing_key": routing_key })),
            )
            .await
            .expect_success(&format!("bind {queue} to {exchange}"));
    }

    pub async fn exchange_exists(&self, exchange: &str) -> bool {
        let answer = self
            .api
            .call(Method::GET, &["exchanges", &self.name, exchange], None)
            .await;
        match answer.status {
            200 => true,
            404 => false,
            _ => panic!("exchange {exchange}: {answer:?}"),
        }
    }

    pub async fn delete_exchange(&self, exchange: &str) {
        self.api
            .call(Method::DELETE, &["exchanges", &self.name, exchange], None)
            .await
            .expect_success(&format!("delete the exchange {exchange}"));
    }

    /// Publishes `payload` (JSON, persistent) to `exchange` with `headers`;
    /// fails the test unless it was routed.
    pub async fn publish_json(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &Value,
        headers: Value,
    ) {
        let body = json!({
            "properties": {"delivery_mode": 2, "content_type": "application/json", "headers": headers},
            "routing_key": routing_key,
            "payload": payload.to_string(),
            "payload_encoding": "string",
        });
        let answer: Answer = self
            .api
            .call(
                Method::POST,
                &["exchanges", &self.name, exchange, "publish"],
                Some(&body),
            )
            .await
            .expect_success(&format!("publish to {exchange:?}"));
        assert_eq!(answer.json()["routed"], true, "routed: {}", answer.body);
    }

    /// Takes up to `count` messages off `queue`, their payloads as JSON
    /// (`Null` where a payload is not JSON).
    pub async fn take(&self, queue: &str, count: u32, take: Take) -> Vec<Value> {
        self.try_take(queue, count, take)
            .await
            .unwrap_or_else(|e| panic!("get from {queue}: {e}"))
    }

    /// [`Self::take`], with an error when the management API fails to answer.
    pub async fn try_take(
        &self,
        queue: &str,
        count: u32,
        take: Take,
    ) -> Result<Vec<Value>, String> {
        let messages = self
            .api
            .try_messages(&self.name, queue, count, take)
            .await?;
        Ok(messages
            .iter()
            .map(|m| {
                serde_json::from_str(m["payload"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
            })
            .collect())
    }

    /// Force-closes the worker's connections in this vhost, as
    /// `rabbitmqctl close_all_connections` would (without touching other tests' vhosts).
    pub async fn close_worker_connections(&self) -> usize {
        // The management API lists a new connection after its next statistics round.
        let deadline = Instant::now() + Duration::from_secs(10);
        let conns = loop {
            let answer = self
                .api
                .call(Method::GET, &["vhosts", &self.name, "connections"], None)
                .await;
            let all: Vec<Value> = serde_json::from_str(&answer.body).unwrap_or_default();
            let ours: Vec<Value> = all
                .into_iter()
                .filter(|c| c["client_properties"]["connection_name"] == "onboarding-worker")
                .collect();
            if !ours.is_empty() || Instant::now() > deadline {
                break ours;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for c in &conns {
            let name = c["name"].as_str().expect("a connection's name");
            self.api
                .call(Method::DELETE, &["connections", name], None)
                .await;
        }
        conns.len()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let name = self.name.clone();
        let deleted =
            super::on_own_runtime(
                move || async move { Management::new().delete_vhost(&name).await },
            );
        if !matches!(&deleted, Ok(Ok(a)) if a.is_success()) {
            eprintln!("could not delete vhost {}: {deleted:?}", self.name);
        }
    }
}
