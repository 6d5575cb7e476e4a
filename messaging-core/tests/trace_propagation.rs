//! What a handler publishes carries the trace id of the message it handles (DESIGN §3), both
//! on the dispatcher's path without wrappers and on the wrapped one (a time limit).
//!
//! Topics here start with `trace-test.`.

use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use messaging_core::{OutgoingMessage, trace};

#[message_handler(topic = "trace-test.in")]
async fn forwards(body: serde_json::Value, producer: Producer) -> anyhow::Result<()> {
    producer.send("trace-test.out", &body).await?;
    Ok(())
}

#[message_handler(topic = "trace-test.limited", timeout = "30s")]
async fn forwards_within_a_limit(
    body: serde_json::Value,
    producer: Producer,
) -> anyhow::Result<()> {
    producer.send("trace-test.limited.out", &body).await?;
    Ok(())
}

fn trace_ids(harness: &TestHarness, topic: &str) -> Vec<Option<String>> {
    harness
        .broker()
        .messages(topic)
        .iter()
        .map(|m| m.header("x-trace-id").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn follow_ups_carry_the_trace_id_of_the_message_handled() {
    let harness = TestHarness::builder()
        .runtime(|r| r.topics(["trace-test.in", "trace-test.limited"]))
        .start()
        .await
        .unwrap();
    let sent = [
        ("trace-test.in", Some("trace-1")),
        ("trace-test.in", None),
        ("trace-test.limited", Some("trace-2")),
        ("trace-test.limited", None),
    ];
    for (topic, trace_id) in sent {
        let mut message = OutgoingMessage::new(topic, br#"{"n":1}"#.to_vec());
        if let Some(id) = trace_id {
            message = message.with_header("x-trace-id", id);
        }
        harness.send_raw(message).await.unwrap();
        // One at a time, so that the follow-ups are in the order sent.
        harness.wait_idle().await;
    }
    assert_eq!(
        trace_ids(&harness, "trace-test.out"),
        [Some("trace-1".to_owned()), None]
    );
    assert_eq!(
        trace_ids(&harness, "trace-test.limited.out"),
        [Some("trace-2".to_owned()), None]
    );
    assert_eq!(trace::current(), None, "nothing in scope outside a handler");
    harness.shutdown().await;
}
