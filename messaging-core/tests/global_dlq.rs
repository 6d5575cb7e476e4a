//! `MESSAGING_DLQ_TOPIC` (`Config::dlq_topic`) moves the dead-letter records of every
//! handler that names no DLQ of its own: a `{topic}` template keeps one DLQ per topic, a
//! plain name gathers them all; a handler's own `dlq` still wins.

use std::sync::Arc;

use messaging_core::{
    Config, DeadLetterRecord, HandlerError, HandlerSpec, MemoryBroker, OutgoingMessage,
    RetryPolicy, Runtime,
};

fn refusing(name: &str, topic: &str) -> HandlerSpec {
    HandlerSpec::new(name, [topic], |_inv| async {
        Err(HandlerError::permanent("refused"))
    })
    .retry(RetryPolicy::NONE)
}

/// Runs the handlers with `dlq_topic` as the global DLQ, one message to each topic, and
/// returns the broker once everything settled.
async fn dead_letter_under(dlq_topic: &str, handlers: Vec<HandlerSpec>) -> MemoryBroker {
    let broker = MemoryBroker::new();
    let topics: Vec<String> = handlers.iter().flat_map(|h| h.topics().to_vec()).collect();
    let mut builder = Runtime::builder()
        .config(Config::default().with_dlq_topic(dlq_topic.to_owned()))
        .broker(Arc::new(broker.clone()))
        .without_registered()
        .install_global_producer(false)
        .concurrency(1);
    for handler in handlers {
        builder = builder.handler(handler);
    }
    let runtime = builder.start().await.unwrap();
    for topic in &topics {
        broker.append(OutgoingMessage::new(topic.as_str(), b"{}".to_vec()));
    }
    broker.wait_idle().await;
    runtime.shutdown().await.unwrap();
    broker
}

fn originals(broker: &MemoryBroker, dlq_topic: &str) -> Vec<String> {
    let mut topics: Vec<String> = broker
        .messages(dlq_topic)
        .iter()
        .map(|m| {
            DeadLetterRecord::from_bytes(&m.payload)
                .unwrap()
                .original
                .topic
        })
        .collect();
    topics.sort();
    topics
}

#[tokio::test]
async fn a_topic_template_keeps_one_dlq_per_topic() {
    let broker = dead_letter_under(
        "{topic}.failed",
        vec![
            refusing("a", "gdlq-1.orders"),
            refusing("b", "gdlq-1.payments").dlq("gdlq-1.own"),
        ],
    )
    .await;
    assert_eq!(
        originals(&broker, "gdlq-1.orders.failed"),
        ["gdlq-1.orders"]
    );
    assert_eq!(
        originals(&broker, "gdlq-1.own"),
        ["gdlq-1.payments"],
        "the handler's own DLQ wins"
    );
    assert!(broker.messages("gdlq-1.orders.dlq").is_empty());
    assert!(broker.messages("gdlq-1.payments.failed").is_empty());
}

#[tokio::test]
async fn a_plain_name_gathers_every_topic() {
    let broker = dead_letter_under(
        "gdlq-2.dead-letters",
        vec![
            refusing("a", "gdlq-2.orders"),
            refusing("b", "gdlq-2.payments"),
        ],
    )
    .await;
    assert_eq!(
        originals(&broker, "gdlq-2.dead-letters"),
        ["gdlq-2.orders", "gdlq-2.payments"]
    );
}
