//! `messaging_end_to_end_seconds`: from an event's creation (its envelope's id, a UUIDv7 of
//! the envelope's timestamp) to the end of its successful handling, per topic and handler.
//! Messages without an envelope and replays from a DLQ are not observed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use messaging_core::message::header;
use messaging_core::metrics::{metrics, names};
use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use messaging_core::{Event, OutgoingMessage};

const TOPIC: &str = "end-to-end.orders";
const HANDLER: &str = "end_to_end_order";

#[message_handler(topic = "end-to-end.orders")]
async fn end_to_end_order(_order: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

/// A sample of the histogram for [`HANDLER`], e.g. `_bucket` with `le="1"`, or `_sum`.
fn sample(text: &str, suffix: &str, le: Option<&str>) -> f64 {
    let prefix = format!("{}{suffix}{{", names::END_TO_END);
    text.lines()
        .find(|l| {
            l.starts_with(&prefix)
                && l.contains(&format!(
                    "topic=\"{TOPIC}\",handler=\"end_to_end_latency::{HANDLER}\""
                ))
                && le.is_none_or(|le| l.contains(&format!("le=\"{le}\"")))
        })
        .unwrap_or_else(|| panic!("no {prefix} {le:?} for {HANDLER} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// An enveloped event created `ago`, as another service would have published it then.
fn created_ago(ago: Duration) -> OutgoingMessage {
    let at = (SystemTime::now() - ago)
        .duration_since(UNIX_EPOCH)
        .unwrap();
    let mut event = Event::new("order.created", serde_json::json!({"id": 7}), "elsewhere");
    event.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.as_secs(),
        at.subsec_nanos(),
    ));
    event.timestamp = (UNIX_EPOCH + at).into();
    OutgoingMessage::new(TOPIC, serde_json::to_vec(&event).unwrap())
        .with_header(header::EVENT_NAME, "order.created")
        .with_header(header::EVENT_ID, event.id.to_string())
}

#[tokio::test]
async fn the_age_of_each_enveloped_event_is_observed_when_handled() {
    let harness = TestHarness::builder().start().await.unwrap();
    // Published now, and two seconds ago.
    harness
        .publish_event("order.created", &serde_json::json!({"id": 1}), TOPIC)
        .await
        .unwrap();
    harness
        .send_raw(created_ago(Duration::from_secs(2)))
        .await
        .unwrap();
    // Not observed: no envelope; a replay, whose age would be its time in the DLQ.
    harness
        .send(TOPIC, &serde_json::json!({"id": 2}))
        .await
        .unwrap();
    harness
        .send_raw(created_ago(Duration::from_secs(3600)).with_header(header::REPLAYED, "1"))
        .await
        .unwrap();
    harness.wait_idle().await;
    assert_eq!(harness.succeeded(HANDLER), 4);
    let counters = harness.runtime().handler_metrics(HANDLER);
    assert_eq!(counters[0].end_to_end_count(), 2);

    let text = metrics().render();
    assert_eq!(sample(&text, "_count", None), 2.0);
    assert_eq!(sample(&text, "_bucket", Some("1")), 1.0, "the fresh one");
    assert_eq!(
        sample(&text, "_bucket", Some("2.5")),
        2.0,
        "the two-second one"
    );
    let sum = sample(&text, "_sum", None);
    assert!((2.0..3.0).contains(&sum), "{sum}");
    harness.shutdown().await;
}
