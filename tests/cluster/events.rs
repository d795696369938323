//! The subscriber's side: its quorum queue bound to every event, read through
//! whichever node answers; and publishing requests through whichever node
//! takes them.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use onboarding_worker::broker::admin::Admin;
use serde_json::Value;

use crate::EVENTS_QUEUE;

/// Declares the subscriber's quorum queue and binds it to every event.
pub async fn declare_events_queue(url: &str) -> Result<(), String> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(
        EVENTS_QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map_err(|e| e.to_string())?;
    ch.queue_bind(
        EVENTS_QUEUE.into(),
        "onboarding.events".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = conn.close(200, "declared".into()).await;
    Ok(())
}

/// Reads the subscriber's queue through `urls` (in turn, reconnecting on any
/// error), acking each event after it is handed on with the moment it arrived.
pub fn spawn_events_reader(
    urls: Vec<String>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reconnects = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reconnects.clone();
    let task = tokio::spawn(async move {
        let mut i = 0;
        loop {
            let url = &urls[i % urls.len()];
            i += 1;
            let session = async {
                let conn = Connection::connect(url, ConnectionProperties::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
                ch.basic_qos(500, Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut consumer = ch
                    .basic_consume(
                        EVENTS_QUEUE.into(),
                        "cluster-test".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                while let Some(d) = consumer.next().await {
                    let d = d.map_err(|e| e.to_string())?;
                    let v: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                    if tx.send((Instant::now(), v)).is_err() {
                        return Ok(());
                    }
                    d.acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Err::<(), String>("consumer ended".into())
            };
            match session.await {
                Ok(()) => return,
                Err(e) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("cluster test: events reader on {url}: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    (task, rx, reconnects)
}

/// Publishes through the first of `urls` that takes it (a new connection
/// after a failure); a copy that went through twice is the worker's "once
/// per request_id" to handle.
pub async fn publish(admin: &mut Option<Admin>, urls: &[String], body: &Value) -> usize {
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if admin.is_none() {
            for url in urls {
                if let Ok(a) = Admin::connect(url).await {
                    *admin = Some(a);
                    break;
                }
            }
        }
        if let Some(a) = admin.as_ref() {
            match tokio::time::timeout(
                Duration::from_secs(10),
                a.publish_request("test", body.to_string().as_bytes()),
            )
            .await
            {
                Ok(Ok(())) => return failures,
                Ok(Err(e)) => eprintln!("cluster test: publish failed: {e}; again"),
                Err(_) => eprintln!("cluster test: publish unconfirmed after 10 s; again"),
            }
            *admin = None;
        }
        failures += 1;
        assert!(
            Instant::now() < deadline,
            "could not publish {} within 30 s",
            body["request_id"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
