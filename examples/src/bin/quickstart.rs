//! The quick start: the HTTP API and every handler in one process on the in-memory broker.
//! It sends a few requests to itself and prints what was handled: one retry, one
//! dead-letter record, an order retried by its client and charged once, the mood pipeline,
//! and the Guardian's advice, whole and streamed. No server needed.
//!
//! Run with: cargo run -p messaging-examples --bin quickstart

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use messaging_core::OutgoingMessage;
use messaging_core::prelude::*;
use messaging_core::{MemoryBroker, Runtime};
use messaging_examples::api;
use tower::ServiceExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    configure_messaging(
        Config::default()
            .with_backend("memory")
            .with_source("quickstart"),
    );
    let runtime = messaging_examples::with_state(Runtime::builder())
        .start()
        .await?;

    for (uri, body) in [
        ("/users", r#"{"email":"ada@example.com"}"#),
        ("/orders", r#"{"user_id":1,"total":42.5}"#),
        ("/orders", r#"{"user_id":1,"total":250000}"#),
        (
            "/mood-entries",
            r#"{"user_id":"u-1","mood_score":7,"tags":["rested"]}"#,
        ),
    ] {
        post(uri, body, None).await?;
    }

    // A client retries an order with the same Idempotency-Key: it is charged once.
    for _ in 0..2 {
        post(
            "/orders",
            r#"{"user_id":2,"total":12.0}"#,
            Some("checkout-77"),
        )
        .await?;
    }

    // The API asks the Guardian and waits for its reply (request-reply) …
    let question = r#"{"user_id":"u-1","guardian_type":"mental","query":"How do I sleep better?"}"#;
    post("/guardian/advice", question, None).await?;
    // … or streams it sentence by sentence as Server-Sent Events.
    let uri = "/guardian/advice/stream?user_id=u-1&guardian_type=mental&query=sleep";
    let response = api::router()
        .oneshot(Request::get(uri).body(Body::empty())?)
        .await?;
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
    println!(
        "[http] GET {uri} ->\n{}",
        String::from_utf8_lossy(&bytes).trim_end()
    );

    // Another team's service publishes in its own envelope shape.
    let beat = r#"{"type":"BEAT_CREATED","payload":{"beatId":"b-1","userId":"u-1","audioUrl":"s3://beats/b-1.wav"}}"#;
    get_producer()
        .send_raw(OutgoingMessage::new(
            "beats-events",
            beat.as_bytes().to_vec(),
        ))
        .await?;
    println!("[node] published {beat}");

    // Background `#[event]` publishes, retries and DLQ writes all settle here.
    get_producer().flush().await?;
    tokio::time::timeout(Duration::from_secs(10), MemoryBroker::shared().wait_idle()).await?;

    for message in MemoryBroker::shared().messages("orders.created.dlq") {
        let record: serde_json::Value = serde_json::from_slice(&message.payload)?;
        println!(
            "[dlq] orders.created.dlq:\n{}",
            serde_json::to_string_pretty(&record)?
        );
    }
    println!(
        "[metrics] duplicates of orders.created skipped by payments: {}",
        messaging_core::metrics::metrics().duplicates("orders.created", "payments")
    );
    runtime.shutdown().await?;
    Ok(())
}

/// Sends one request to the API and prints its answer.
async fn post(uri: &str, body: &str, idempotency_key: Option<&str>) -> anyhow::Result<()> {
    let mut request = Request::post(uri).header("content-type", "application/json");
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = api::router()
        .oneshot(request.body(Body::from(body.to_owned()))?)
        .await?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
    println!(
        "[http] POST {uri} {body} -> {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(())
}
