//! Dead-letter records written on Kafka have the schema of the memory broker's, with the
//! original's partition and offset as position; `browse` reads them back.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test dlq

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, unique};
use messaging_core::{
    Broker, Config, DeadLetterRecord, HandlerError, HandlerSpec, MemoryBroker, Message,
    OutgoingMessage, Producer, RetryPolicy, Runtime,
};

/// Runs an always-failing handler on `broker` for one message and returns its DLQ message.
async fn dead_letter_on(broker: Arc<dyn Broker>, topic: &str, group: &str) -> Message {
    let failing = HandlerSpec::new("charge", [topic.to_owned()], |_inv| async {
        Err::<(), _>(HandlerError::retryable("card declined"))
    })
    .group(group)
    .retry(RetryPolicy::new(1, Duration::from_millis(10)));
    let config = Config::default().with_source("billing");
    let runtime = Runtime::builder()
        .broker(Arc::clone(&broker))
        .config(config.clone())
        .without_registered()
        .install_global_producer(false)
        .from_beginning(true)
        .handler(failing)
        .start()
        .await
        .expect("runtime starts");
    let message = OutgoingMessage::new(topic, br#"{"order_id":42}"#.to_vec())
        .with_key("42")
        .with_header("x-event-name", "order.created")
        .with_header("x-trace-id", "trace-1")
        .with_header("x-custom", "kept");
    Producer::new(Arc::clone(&broker), config)
        .send_raw(message)
        .await
        .expect("send is acknowledged");
    let dlq_topic = format!("{topic}.dlq");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = broker.browse(&dlq_topic, 10).await.expect("browse the DLQ");
    while found.is_empty() {
        assert!(Instant::now() < deadline, "no DLQ record on {dlq_topic}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = broker.browse(&dlq_topic, 10).await.expect("browse the DLQ");
    }
    // Shutdown waits for the handler's work, DLQ writes included: a second, wrong, record
    // would be there once it returns.
    runtime.shutdown().await.unwrap();
    let found_again = broker.browse(&dlq_topic, 10).await.expect("browse the DLQ");
    assert_eq!(found_again.len(), 1, "one DLQ record only");
    assert_eq!(found.len(), 1, "one DLQ record");
    found.remove(0)
}

/// Every path to a leaf of a JSON value (`original.headers.x-custom`).
fn paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                paths(v, &format!("{prefix}.{k}"), out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_records_match_the_memory_broker_with_partition_and_offset() {
    let topic = unique("payments");
    let group = unique("billing");
    let kafka = connect(3).await;
    let on_kafka = dead_letter_on(kafka.clone().into_dyn(), &topic, &group).await;
    let on_memory = dead_letter_on(Arc::new(MemoryBroker::new()), &topic, &group).await;

    let parse = |m: &Message| -> (DeadLetterRecord, serde_json::Value) {
        let record = DeadLetterRecord::from_bytes(&m.payload).expect("a DLQ record");
        (record, serde_json::from_slice(&m.payload).unwrap())
    };
    let (k, k_json) = parse(&on_kafka);
    let (m, m_json) = parse(&on_memory);
    let (mut k_paths, mut m_paths) = (BTreeSet::new(), BTreeSet::new());
    paths(&k_json, "", &mut k_paths);
    paths(&m_json, "", &mut m_paths);
    assert_eq!(k_paths, m_paths, "same JSON fields");
    assert_eq!(
        on_kafka.headers.keys().collect::<Vec<_>>(),
        on_memory.headers.keys().collect::<Vec<_>>(),
        "same DLQ headers"
    );

    // Same values, but for times and the broker's position.
    assert_eq!((k.version, m.version), (1, 1));
    assert_eq!(k.original.topic, m.original.topic);
    assert_eq!(k.original.key, m.original.key);
    assert_eq!(k.original.payload, m.original.payload);
    assert_eq!(k.original.encoding, m.original.encoding);
    assert_eq!(k.original.headers, m.original.headers);
    assert_eq!(k.original.headers.get("x-custom"), Some("kept"));
    assert_eq!(
        (k.error.kind, &k.error.message),
        (m.error.kind, &m.error.message)
    );
    assert_eq!((k.attempts, m.attempts), (2, 2));
    assert_eq!(
        (&k.handler, &k.group, &k.source),
        (&m.handler, &m.group, &m.source)
    );
    assert_eq!((&k.event_name, &k.trace_id), (&m.event_name, &m.trace_id));
    assert_eq!(m.original.position, "offset 0");

    // Kafka's position names the original's partition and offset: it is there.
    let words: Vec<&str> = k.original.position.split(' ').collect();
    let ["partition", partition, "offset", offset] = words[..] else {
        panic!(
            "position `{}` is not `partition N offset M`",
            k.original.position
        );
    };
    let (partition, offset): (i32, i64) = (partition.parse().unwrap(), offset.parse().unwrap());
    let originals = kafka.browse(&topic, 10).await.unwrap();
    let original = originals
        .iter()
        .find(|o| o.position == messaging_core::Position::Partition { partition, offset })
        .unwrap_or_else(|| panic!("no message at {}: {originals:?}", k.original.position));
    assert_eq!(original.payload.as_ref(), k.original.payload.as_bytes());
}
