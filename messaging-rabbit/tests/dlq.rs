//! A dead-letter record read back from RabbitMQ's DLQ queue is the same document, byte for
//! byte, as the memory broker's for the same failure: same JSON keys in the same order, same
//! values but for the times, the record's id and the broker position (`delivery tag …`
//! here).
//! Needs RabbitMQ on 127.0.0.1:5672.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::Names;
use messaging_core::dlq::DLQ_HEADER;
use messaging_core::message::header;
use messaging_core::{
    Broker, Config, DeadLetterRecord, HandlerError, HandlerSpec, Invocation, MemoryBroker, Message,
    OutgoingMessage, Producer, Runtime,
};
use serde_json::Value;

/// Runs a handler that fails for good on `topic` and returns the DLQ message it produced.
async fn dead_letter_on(
    broker: Arc<dyn Broker>,
    topic: &str,
    group: &str,
    message: OutgoingMessage,
    read_dlq: impl AsyncFnMut() -> Vec<Message>,
) -> Message {
    let failing = HandlerSpec::new(
        "charge_card",
        [topic.to_owned()],
        |_inv: Invocation| async { Err::<(), _>(HandlerError::permanent("card declined")) },
    )
    .group(group);
    let runtime = Runtime::builder()
        .broker(Arc::clone(&broker))
        .config(Config::default().with_source("dlq-schema-test"))
        .without_registered()
        .install_global_producer(false)
        .handler(failing)
        .start()
        .await
        .expect("runtime starts");
    broker.publish(message).await.expect("published");
    let mut read_dlq = read_dlq;
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while records.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no DLQ record on {}",
            broker.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        records = read_dlq().await;
    }
    runtime.shutdown().await.unwrap();
    assert_eq!(records.len(), 1, "one record on {}", broker.name());
    records.remove(0)
}

/// Every key path of a JSON document, objects' keys in document order.
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            let path = format!("{prefix}/{key}");
            out.push(path.clone());
            key_paths(inner, &path, out);
        }
    }
}

/// The record without what differs between two failures: the times, the broker position and
/// the record's own id (a fresh UUID per record, present on both).
fn normalized(mut record: DeadLetterRecord, at: DateTime<Utc>) -> DeadLetterRecord {
    assert!(record.id.is_some(), "every record has an id");
    record.id = None;
    record.first_failure_at = at;
    record.last_failure_at = at;
    record.dead_lettered_at = at;
    record.original.position = "normalized".to_owned();
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_records_match_the_memory_brokers_byte_for_byte() {
    let n = Names::new("dlq");
    let topic = n.topic("payments");
    let dlq_topic = format!("{topic}.dlq");
    let group = n.group("billing");

    // One enveloped message, published unchanged to both brokers.
    let producer = Producer::new(Arc::new(MemoryBroker::new()), Config::default());
    let (_, mut message) = producer
        .envelope(
            "payment.requested",
            &serde_json::json!({"order_id": 42, "amount": 9.5}),
            &topic,
            Some("42".into()),
        )
        .unwrap();
    message.headers.insert(header::TRACE_ID, "trace-7");
    message.headers.insert("x-custom", "kept");

    let memory = MemoryBroker::new();
    let on_memory = dead_letter_on(
        Arc::new(memory.clone()),
        &topic,
        &group,
        message.clone(),
        async || {
            memory
                .messages(&dlq_topic)
                .iter()
                .map(|m| (**m).clone())
                .collect()
        },
    )
    .await;

    let rabbit = n.broker().await;
    let on_rabbit = dead_letter_on(
        rabbit.clone().into_dyn(),
        &topic,
        &group,
        message.clone(),
        async || {
            rabbit
                .browse(&dlq_topic, 10)
                .await
                .expect("the DLQ queue is browsable")
        },
    )
    .await;

    // Both parse, and the bytes on the wire are the canonical serialization of the record.
    let mut records = Vec::new();
    for m in [&on_memory, &on_rabbit] {
        let record =
            DeadLetterRecord::from_bytes(&m.payload).expect("parses as a DeadLetterRecord");
        assert_eq!(
            serde_json::to_vec(&record).unwrap(),
            m.payload.to_vec(),
            "canonical bytes"
        );
        records.push(record);
    }
    let (from_memory, from_rabbit) = (records.remove(0), records.remove(0));

    // Same keys, same order.
    let mut paths = [Vec::new(), Vec::new()];
    for (m, out) in [&on_memory, &on_rabbit].iter().zip(paths.iter_mut()) {
        key_paths(&serde_json::from_slice(&m.payload).unwrap(), "", out);
    }
    assert_eq!(paths[0], paths[1], "the same JSON keys");
    assert!(
        paths[1].contains(&"/original/headers/x-custom".to_owned()),
        "{:?}",
        paths[1]
    );

    // Same values but for the times, the id and the position.
    assert!(
        from_memory.original.position.starts_with("offset "),
        "{}",
        from_memory.original.position
    );
    let tag = from_rabbit
        .original
        .position
        .strip_prefix("delivery tag ")
        .expect("a delivery tag position");
    assert!(
        tag.parse::<u64>().is_ok(),
        "{}",
        from_rabbit.original.position
    );
    let at = Utc::now();
    assert_eq!(
        normalized(from_memory, at),
        normalized(from_rabbit.clone(), at)
    );
    assert_eq!(from_rabbit.original.key.as_deref(), Some("42"));
    assert_eq!(from_rabbit.trace_id.as_deref(), Some("trace-7"));
    assert_eq!(from_rabbit.event_name.as_deref(), Some("payment.requested"));
    assert_eq!(from_rabbit.error.message, "card declined");

    // The DLQ messages themselves carry the same key and headers.
    assert_eq!(on_memory.key, on_rabbit.key);
    assert_eq!(on_memory.headers, on_rabbit.headers);
    assert_eq!(on_rabbit.header(DLQ_HEADER), Some("1"));
    let names: BTreeSet<&str> = on_rabbit.headers.keys().collect();
    assert_eq!(
        names,
        BTreeSet::from([DLQ_HEADER, header::EVENT_NAME, header::TRACE_ID])
    );

    rabbit
        .delete_queue(&rabbit.group_queue(&group).unwrap())
        .await
        .unwrap();
    rabbit
        .delete_queue(&rabbit.topic_queue(&dlq_topic).unwrap())
        .await
        .unwrap();
}
