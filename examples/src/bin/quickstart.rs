//! The quick start: the HTTP API and every handler in one process on the in-memory broker.
//! It sends a few requests to itself and prints what was handled, one retry and one
//! dead-letter record. No server needed.
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
        let request = Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(body))?;
        let response = api::router().oneshot(request).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
        println!(
            "[http] POST {uri} {body} -> {status} {}",
            String::from_utf8_lossy(&bytes)
        );
    }

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
    runtime.shutdown().await?;
    Ok(())
}
