//! `dlq_snapshot` reads a DLQ by assignment, without joining a group; settling passes over
//! the replayed records (the replay group's committed offsets) and keeps every other one
//! listed.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test replay

mod common;

use std::time::{Duration, Instant};

use common::{connect, unique};
use messaging_core::{Broker, DeadLetterRecord, Message, OutgoingMessage};
use serde_json::json;

/// A dead-letter record of a message of `topic` with body `body`, as the runtime writes it;
/// `truncated` marks one whose body was cut down (it cannot be replayed).
fn record(dlq: &str, topic: &str, key: &str, body: &str, truncated: bool) -> OutgoingMessage {
    let mut original = json!({
        "topic": topic,
        "key": key,
        "payload": body,
        "headers": {"x-event-name": "order.created"},
        "position": "partition 0 offset 1",
    });
    if truncated {
        original["truncated"] = json!(true);
        original["encoding"] = json!("base64");
        original["size"] = json!(5_000_000);
    }
    let at = "2026-01-01T00:00:00Z";
    let record = json!({
        "version": 1,
        "original": original,
        "error": {"kind": "handler", "message": "card declined"},
        "attempts": 3,
        "first_failure_at": at,
        "last_failure_at": at,
        "handler": "charge",
        "group": "billing",
        "dead_lettered_at": at,
    });
    OutgoingMessage::new(dlq, serde_json::to_vec(&record).unwrap())
        .with_key(key)
        .with_header("x-dlq", "1")
}

/// The body of each message, with its key and headers, in a stable order.
fn contents(messages: &[Message]) -> Vec<String> {
    let mut all: Vec<String> = messages
        .iter()
        .map(|m| {
            format!(
                "{:?} {:?} {}",
                m.key,
                m.headers,
                String::from_utf8_lossy(&m.payload)
            )
        })
        .collect();
    all.sort();
    all
}

async fn publish_all(broker: &dyn Broker, messages: &[OutgoingMessage]) {
    for message in messages {
        broker.publish(message.clone()).await.expect("published");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_passes_over_what_it_replayed_and_keeps_the_rest_listed() {
    let kafka = connect(3).await;
    let broker: &dyn Broker = &kafka;
    let topic = unique("orders");
    let dlq = format!("{topic}.dlq");
    // Same keys, so that records kept sit before replayed ones of their partition.
    let waiting = [
        record(&dlq, &topic, "a", "cut short", true),
        OutgoingMessage::new(&dlq, "not json at all")
            .with_key("b")
            .with_header("x-custom", "kept"),
        record(&dlq, &topic, "a", r#"{"order":1}"#, false),
        record(&dlq, &topic, "b", r#"{"order":2}"#, false),
        record(&dlq, &topic, "c", r#"{"order":3}"#, false),
    ];
    publish_all(broker, &waiting).await;

    let snapshot = broker.dlq_snapshot(&dlq, 100).await.expect("snapshot");
    let records = snapshot.records().to_vec();
    assert_eq!(
        contents(&records),
        contents(&waiting.iter().map(outgoing_as_message).collect::<Vec<_>>()),
        "the snapshot holds what waited"
    );
    let later = [
        record(&dlq, &topic, "a", r#"{"order":4}"#, false),
        record(&dlq, &topic, "d", r#"{"order":5}"#, false),
    ];
    publish_all(broker, &later).await;
    assert_eq!(
        snapshot.records().len(),
        waiting.len(),
        "what came later is not in it"
    );

    // Replay what can be replayed, as `consumer dlq replay` does: publish, then settle.
    let mut replayed = Vec::new();
    for (index, message) in records.iter().enumerate() {
        let Some(out) = DeadLetterRecord::from_bytes(&message.payload)
            .ok()
            .and_then(|r| r.to_replay().ok())
        else {
            continue;
        };
        broker.publish(out).await.expect("replayed");
        replayed.push(index);
    }
    assert_eq!(
        replayed.len(),
        3,
        "the truncated and the non-JSON ones are not replayable"
    );
    snapshot.settle(replayed).await.expect("settled");

    let kept: Vec<OutgoingMessage> = [waiting[0].clone(), waiting[1].clone()]
        .into_iter()
        .chain(later.iter().cloned())
        .collect();
    let expected = contents(&kept.iter().map(outgoing_as_message).collect::<Vec<_>>());
    let listed = broker.browse(&dlq, 100).await.expect("browsed");
    assert_eq!(
        contents(&listed),
        expected,
        "listed: the records kept (same key, body and headers) and the later ones"
    );
    let again = broker
        .dlq_snapshot(&dlq, 100)
        .await
        .expect("second snapshot");
    assert_eq!(
        contents(again.records()),
        expected,
        "a second replay does not see the replayed records"
    );
    // The originals were re-published to their topic.
    let originals = broker.browse(&topic, 100).await.expect("browsed");
    assert_eq!(originals.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_68_records_with_no_consumer_running_is_quick() {
    let kafka = connect(3).await;
    let broker: &dyn Broker = &kafka;
    let topic = unique("payments");
    let dlq = format!("{topic}.dlq");
    let records: Vec<OutgoingMessage> = (0..68)
        .map(|i| {
            record(
                &dlq,
                &topic,
                &format!("k{i}"),
                &format!(r#"{{"n":{i}}}"#),
                false,
            )
        })
        .collect();
    let publishes = records.iter().map(|m| broker.publish(m.clone()));
    for outcome in futures::future::join_all(publishes).await {
        outcome.expect("published");
    }
    let started = Instant::now();
    let snapshot = broker.dlq_snapshot(&dlq, 1000).await.expect("snapshot");
    let took = started.elapsed();
    eprintln!("a snapshot of 68 records took {took:?}");
    assert_eq!(snapshot.records().len(), 68);
    assert!(
        took < Duration::from_secs(5),
        "no group join to wait for: took {took:?}"
    );
    let limited = broker.dlq_snapshot(&dlq, 10).await.expect("snapshot");
    assert_eq!(limited.records().len(), 10, "at most the limit");

    // Empty partitions end at once too.
    let empty = format!("{}.dlq", unique("refunds"));
    broker
        .declare_topics(std::slice::from_ref(&empty))
        .await
        .expect("declared");
    let started = Instant::now();
    let snapshot = broker.dlq_snapshot(&empty, 1000).await.expect("snapshot");
    assert!(snapshot.records().is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let unknown = format!("{}.dlq", unique("never"));
    assert!(
        broker
            .dlq_snapshot(&unknown, 10)
            .await
            .expect("snapshot")
            .records()
            .is_empty()
    );
}

fn outgoing_as_message(message: &OutgoingMessage) -> Message {
    let mut out = Message::new(message.topic.as_str(), message.payload.clone())
        .with_headers(message.headers.clone());
    out.key = message.key.clone();
    out
}
