//! DLQ replay snapshots on a real RabbitMQ (127.0.0.1:5672), issue 21: the records waiting in
//! the kept queue when the snapshot starts are taken with `basic.get` and held
//! unacknowledged; settling acknowledges exactly the replayed ones and puts every other back
//! in its place, so truncated records and messages that are not records are never deleted.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::Names;
use messaging_core::dlq::{OriginalMessage, RECORD_VERSION, RecordedError};
use messaging_core::{Broker, DeadLetterRecord, FailureKind, Message, OutgoingMessage};
use messaging_rabbit::RabbitBroker;

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
        source: "dlq-replay-test".into(),
        trace_id: None,
        dead_lettered_at: now,
        id: Some(uuid::Uuid::now_v7().to_string()),
        replays: 0,
        first_error: None,
    }
}

/// Whether `dlq replay` would re-publish the message.
fn replayable(message: &Message) -> bool {
    DeadLetterRecord::from_bytes(&message.payload).is_ok_and(|r| r.to_replay().is_ok())
}

fn payloads(messages: &[Message]) -> Vec<Vec<u8>> {
    messages.iter().map(|m| m.payload.to_vec()).collect()
}

async fn declared_dlq(n: &Names, broker: &RabbitBroker) -> String {
    let dlq = n.topic("orders.created.dlq");
    broker
        .declare_topics(std::slice::from_ref(&dlq))
        .await
        .unwrap();
    dlq
}

async fn publish_all(broker: &RabbitBroker, messages: &[OutgoingMessage]) {
    for message in messages {
        broker.publish(message.clone()).await.unwrap();
    }
}

/// Browses `topic` until it shows exactly `expected` (a record a closed channel hands back
/// reaches the queue once the broker has handled the close), failing after 10 s.
async fn wait_for_listing(broker: &RabbitBroker, topic: &str, expected: &[Vec<u8>]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = payloads(&broker.browse(topic, 100).await.unwrap());
        if listed == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the DLQ lists {} messages, not the {} expected: {:?}",
            listed.len(),
            expected.len(),
            listed
                .iter()
                .map(|p| String::from_utf8_lossy(&p[..p.len().min(60)]).into_owned())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_removes_exactly_the_replayed_records_and_keeps_the_rest_in_order() {
    let n = Names::new("snapshot");
    let broker = n.broker().await;
    let dlq = declared_dlq(&n, &broker).await;
    let truncated = record(&vec![b'x'; 64 * 1024]).to_message_within(&dlq, 4 * 1024);
    assert!(
        !replayable(&Message::new(dlq.as_str(), truncated.payload.clone())),
        "the truncated record cannot be replayed"
    );
    let before = [
        record(b"{\"order\":0}").to_message(&dlq),
        record(b"{\"order\":1}").to_message(&dlq),
        truncated,
        OutgoingMessage::new(&dlq, "not a DLQ record"),
        record(b"{\"order\":2}").to_message(&dlq),
    ];
    publish_all(&broker, &before).await;

    let snapshot = broker.dlq_snapshot(&dlq, 100).await.unwrap();
    let after = [
        record(b"{\"order\":3}").to_message(&dlq),
        record(b"{\"order\":4}").to_message(&dlq),
    ];
    publish_all(&broker, &after).await;

    let records = snapshot.records();
    assert_eq!(
        payloads(records),
        before
            .iter()
            .map(|m| m.payload.to_vec())
            .collect::<Vec<_>>(),
        "the snapshot holds the records waiting when it started, oldest first, and no later one"
    );
    assert!(records.iter().all(|m| m.topic == dlq.as_str()));
    let replayed: Vec<usize> = (0..records.len())
        .filter(|&i| replayable(&records[i]))
        .collect();
    assert_eq!(replayed, [0, 1, 4]);
    snapshot.settle(replayed).await.unwrap();

    // Settled means acknowledged and handed back (the channel's close waited for both).
    let expected: Vec<Vec<u8>> = [&before[2], &before[3], &after[0], &after[1]]
        .iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(
        payloads(&broker.browse(&dlq, 100).await.unwrap()),
        expected,
        "the truncated record and the non-record stay, in their places, before the later records"
    );
    broker
        .delete_queue(&broker.topic_queue(&dlq).unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_takes_at_most_its_limit_and_a_second_replay_sees_only_what_is_left() {
    let n = Names::new("snapshot-limit");
    let broker = n.broker().await;
    let dlq = declared_dlq(&n, &broker).await;
    let sent: Vec<OutgoingMessage> = (0..3)
        .map(|i| record(format!("{{\"order\":{i}}}").as_bytes()).to_message(&dlq))
        .collect();
    publish_all(&broker, &sent).await;

    let first = broker.dlq_snapshot(&dlq, 2).await.unwrap();
    assert_eq!(
        payloads(first.records()),
        [sent[0].payload.to_vec(), sent[1].payload.to_vec()]
    );
    first.settle(vec![0]).await.unwrap();

    let second = broker.dlq_snapshot(&dlq, 100).await.unwrap();
    assert_eq!(
        payloads(second.records()),
        [sent[1].payload.to_vec(), sent[2].payload.to_vec()],
        "the replayed record is gone, the one not replayed is back in its place"
    );
    second.settle(vec![0, 1]).await.unwrap();
    assert!(broker.browse(&dlq, 100).await.unwrap().is_empty());
    broker
        .delete_queue(&broker.topic_queue(&dlq).unwrap())
        .await
        .unwrap();
}

/// A dry run, or a replay that fails half-way, drops its snapshot unsettled: the channel
/// closes and every record returns to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_dropped_unsettled_returns_every_record() {
    let n = Names::new("snapshot-drop");
    let broker = n.broker().await;
    let dlq = declared_dlq(&n, &broker).await;
    let sent: Vec<OutgoingMessage> = (0..3)
        .map(|i| record(format!("{{\"order\":{i}}}").as_bytes()).to_message(&dlq))
        .collect();
    publish_all(&broker, &sent).await;

    let snapshot = broker.dlq_snapshot(&dlq, 100).await.unwrap();
    assert_eq!(snapshot.records().len(), 3);
    assert!(
        broker.browse(&dlq, 100).await.unwrap().is_empty(),
        "the snapshot holds its records while it lives"
    );
    drop(snapshot);
    let expected: Vec<Vec<u8>> = sent.iter().map(|m| m.payload.to_vec()).collect();
    wait_for_listing(&broker, &dlq, &expected).await;
    broker
        .delete_queue(&broker.topic_queue(&dlq).unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_never_declared_has_an_empty_snapshot() {
    let n = Names::new("snapshot-none");
    let broker = n.broker().await;
    let snapshot = broker
        .dlq_snapshot(&n.topic("never.declared.dlq"), 100)
        .await
        .unwrap();
    assert!(snapshot.records().is_empty());
    snapshot.settle(Vec::new()).await.unwrap();
    let error = match broker.dlq_snapshot("orders.*.dlq", 100).await {
        Ok(_) => panic!("a wildcard topic cannot name a kept queue"),
        Err(error) => error,
    };
    assert!(error.to_string().contains("wildcard"), "{error}");
}
