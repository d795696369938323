//! The broker's management API (`guest` on 127.0.0.1:15672) over reqwest:
//! vhosts, and what tests read or change in one that AMQP cannot, or not
//! without disturbing the worker (sampled queue counts, connections, messages
//! read and left in place).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

const BASE: &str = "http://127.0.0.1:15672/api";

/// Fails the test, saying how to start them, unless RabbitMQ and its
/// management API listen.
pub fn broker_must_be_up() {
    let listening = |addr: &str| {
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok()
    };
    if !listening("127.0.0.1:5672") {
        panic!(
            "RabbitMQ is not listening on 127.0.0.1:5672. Start it with `bash scripts/services.sh` (installs and starts it), \
             or `apt-get install -y rabbitmq-server && rabbitmq-plugins enable rabbitmq_management && rabbitmq-server -detached`"
        );
    }
    if !listening("127.0.0.1:15672") {
        panic!("RabbitMQ's management API is not on 127.0.0.1:15672: run `rabbitmq-plugins enable rabbitmq_management`");
    }
}

/// An answer of the management API.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Fails the test unless the call succeeded; `what` names it.
    pub fn expect_success(self, what: &str) -> Answer {
        assert!(
            self.is_success(),
            "{what}: the management API answered {} {}",
            self.status,
            self.body
        );
        self
    }
}

/// How messages read off a queue are acknowledged (the API's `ackmode`).
#[derive(Clone, Copy, Debug)]
pub enum Take {
    /// Removed from the queue.
    Remove,
    /// Left in the queue (a read that times out loses nothing).
    Requeue,
}

/// A client of the management API, as `guest`.
#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
}

impl Default for Management {
    fn default() -> Self {
        Self::new()
    }
}

impl Management {
    pub fn new() -> Management {
        Self::with_timeout(Duration::from_secs(30))
    }

    /// A client whose calls give up after `timeout`.
    pub fn with_timeout(timeout: Duration) -> Management {
        Management {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client"),
        }
    }

    /// `method` on the path made of `segments` below `/api` (each segment
    /// percent-encoded, so `/` as a vhost name and connection names work).
    pub async fn try_call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<Answer, reqwest::Error> {
        let mut url = url::Url::parse(BASE).expect("the base URL");
        url.path_segments_mut()
            .expect("an http URL")
            .extend(segments);
        let mut request = self
            .http
            .request(method, url)
            .basic_auth("guest", Some("guest"));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok(Answer {
            status,
            body: response.text().await?,
        })
    }

    /// [`Self::try_call`], failing the test when the API does not answer.
    pub async fn call(&self, method: Method, segments: &[&str], body: Option<&Value>) -> Answer {
        let path = segments.join("/");
        self.try_call(method.clone(), segments, body)
            .await
            .unwrap_or_else(|e| panic!("management API {method} /api/{path}: {e}"))
    }

    pub async fn create_vhost(&self, name: &str) {
        self.call(Method::PUT, &["vhosts", name], Some(&serde_json::json!({})))
            .await
            .expect_success("create vhost");
        self.call(
            Method::PUT,
            &["permissions", name, "guest"],
            Some(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await
        .expect_success("permissions");
    }

    pub async fn delete_vhost(&self, name: &str) -> Result<Answer, reqwest::Error> {
        self.try_call(Method::DELETE, &["vhosts", name], None).await
    }

    /// Up to `count` messages of `queue`, each as the API gives it
    /// (`payload`, `properties`, ...).
    pub async fn try_messages(
        &self,
        vhost: &str,
        queue: &str,
        count: u32,
        take: Take,
    ) -> Result<Vec<Value>, String> {
        let ackmode = match take {
            Take::Remove => "ack_requeue_false",
            Take::Requeue => "ack_requeue_true",
        };
        let body = serde_json::json!({"count": count, "ackmode": ackmode, "encoding": "auto"});
        let answer = self
            .try_call(Method::POST, &["queues", vhost, queue, "get"], Some(&body))
            .await
            .map_err(|e| e.to_string())?;
        if !answer.is_success() {
            return Err(format!("{} {}", answer.status, answer.body));
        }
        serde_json::from_str(&answer.body).map_err(|e| format!("{e}: {}", answer.body))
    }
}
