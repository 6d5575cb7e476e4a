//! DLQ replay snapshots on a real Redis (127.0.0.1:6379): read with `XRANGE` up to the last
//! entry at the time of the snapshot, settled with `XDEL` of exactly the replayed entries
//! (issue 21).

mod common;

use chrono::Utc;
use common::*;
use messaging_core::dlq::{DLQ_HEADER, OriginalMessage, RECORD_VERSION, RecordedError};
use messaging_core::{Broker, DeadLetterRecord, FailureKind, Message, OutgoingMessage, Position};
use messaging_redis::RedisOptions;

fn record(body: &[u8]) -> DeadLetterRecord {
    let original = Message::new("orders.created", body.to_vec());
    let now = Utc::now();
    DeadLetterRecord {
        version: RECORD_VERSION,
        original: OriginalMessage::capture(&original),
        error: RecordedError {
            kind: FailureKind::Handler,
            message: "card declined".into(),
        },
        attempts: 4,
        first_failure_at: now,
        last_failure_at: now,
        handler: "process_payment".into(),
        group: "payments".into(),
        event_name: Some("order.created".into()),
        source: "dlq-test".into(),
        trace_id: None,
        dead_lettered_at: now,
        id: Some(uuid::Uuid::now_v7().to_string()),
        replays: 0,
        first_error: None,
    }
}

fn stream_id(message: &Message) -> String {
    match &message.position {
        Position::StreamId(id) => id.clone(),
        other => panic!("position {other:?}"),
    }
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(stream_id).collect()
}

/// Whether the record can be re-published, as `dlq replay` decides it.
fn replayable(message: &Message) -> bool {
    DeadLetterRecord::from_bytes(&message.payload).is_ok_and(|r| r.to_replay().is_ok())
}

#[tokio::test]
async fn a_snapshot_is_settled_by_deleting_only_the_replayed_entries() {
    let broker = connect(RedisOptions::default()).await;
    let dlq = unique("snapshot.dlq");
    for n in 0..3 {
        broker
            .publish(record(format!("{{\"order\":{n}}}").as_bytes()).to_message(&dlq))
            .await
            .unwrap();
    }
    // Too large for the limit: written truncated, which replay cannot re-publish.
    let truncated = record(&vec![b'x'; 20_000]).to_message_within(&dlq, 2_000);
    broker.publish(truncated).await.unwrap();
    // Not a DLQ record at all.
    broker
        .publish(OutgoingMessage::new(&dlq, "not json").with_header(DLQ_HEADER, "1"))
        .await
        .unwrap();

    let snapshot = broker.dlq_snapshot(&dlq, 100).await.unwrap();
    let taken = snapshot.records().to_vec();
    assert_eq!(taken.len(), 5);
    assert_eq!(
        taken,
        broker.browse(&dlq, 100).await.unwrap(),
        "the snapshot's messages are built as browse builds them"
    );
    let wanted: Vec<usize> = (0..taken.len())
        .filter(|&i| replayable(&taken[i]))
        .collect();
    assert_eq!(
        wanted,
        [0, 1, 2],
        "the truncated record and the non-record are not replayable"
    );

    // Dead-lettered during the replay: not part of it, and kept by the settle.
    for n in 10..12 {
        broker
            .publish(record(format!("{{\"order\":{n}}}").as_bytes()).to_message(&dlq))
            .await
            .unwrap();
    }
    let later = broker.browse(&dlq, 100).await.unwrap()[5..].to_vec();
    assert_eq!(later.len(), 2);
    assert!(
        ids(&later).iter().all(|id| !ids(&taken).contains(id)),
        "later records are not in the snapshot"
    );
    assert_eq!(snapshot.records(), &taken[..]);

    snapshot.settle(wanted).await.unwrap();
    let left = broker.browse(&dlq, 100).await.unwrap();
    let mut expected = ids(&taken[3..]);
    expected.extend(ids(&later));
    assert_eq!(
        ids(&left),
        expected,
        "the kept records and the later ones are still listed"
    );
    assert_eq!(left[0].payload, taken[3].payload);

    // Read without a group: the stream has none.
    let groups: Vec<redis::Value> =
        redis_cmd(&broker, redis::cmd("XINFO").arg("GROUPS").arg(&dlq)).await;
    assert!(groups.is_empty(), "a snapshot creates no group: {groups:?}");

    // A second replay sees only what is left, oldest first.
    let again = broker.dlq_snapshot(&dlq, 100).await.unwrap();
    assert_eq!(ids(again.records()), expected);
    again.settle(Vec::new()).await.unwrap();
    assert_eq!(ids(&broker.browse(&dlq, 100).await.unwrap()), expected);
}

#[tokio::test]
async fn a_snapshot_takes_at_most_its_limit_oldest_first() {
    let broker = connect(RedisOptions::default()).await;
    let dlq = unique("limit.dlq");
    for n in 0..5 {
        broker
            .publish(record(n.to_string().as_bytes()).to_message(&dlq))
            .await
            .unwrap();
    }
    let all = broker.browse(&dlq, 100).await.unwrap();
    let snapshot = broker.dlq_snapshot(&dlq, 2).await.unwrap();
    assert_eq!(ids(snapshot.records()), ids(&all[..2]));
    snapshot.settle(vec![1]).await.unwrap();
    let left = broker.browse(&dlq, 100).await.unwrap();
    assert_eq!(
        ids(&left),
        [&all[0], &all[2], &all[3], &all[4]].map(stream_id).to_vec()
    );
    let none = broker.dlq_snapshot(&dlq, 0).await.unwrap();
    assert!(none.records().is_empty());
    none.settle(Vec::new()).await.unwrap();
}

#[tokio::test]
async fn a_missing_or_empty_dlq_gives_an_empty_snapshot() {
    let broker = connect(RedisOptions::default()).await;
    let missing = unique("missing.dlq");
    let snapshot = broker.dlq_snapshot(&missing, 100).await.unwrap();
    assert!(snapshot.records().is_empty());
    snapshot.settle(Vec::new()).await.unwrap();
    let exists: usize = redis_cmd(&broker, redis::cmd("EXISTS").arg(&missing)).await;
    assert_eq!(exists, 0, "a snapshot creates no key");

    let declared = unique("declared.dlq");
    broker
        .declare_topics(std::slice::from_ref(&declared))
        .await
        .unwrap();
    let snapshot = broker.dlq_snapshot(&declared, 100).await.unwrap();
    assert!(snapshot.records().is_empty());
}

#[tokio::test]
async fn a_dlq_key_of_another_type_is_an_error_naming_it() {
    let broker = connect(RedisOptions::default()).await;
    let dlq = unique("string.dlq");
    let _: () = redis_cmd(&broker, redis::cmd("SET").arg(&dlq).arg("x")).await;
    let error = match broker.dlq_snapshot(&dlq, 10).await {
        Ok(_) => panic!("a string key gave a snapshot"),
        Err(error) => error,
    };
    assert!(!error.is_config(), "{error}");
}
