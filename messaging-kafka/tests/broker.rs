//! The broker's own behaviour on Kafka: browsing, where a new group starts, topics created
//! on subscription, and failing fast when the cluster is unreachable.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test broker

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{connect, unique};
use messaging_core::{Broker, BrokerError, OutgoingMessage, StartFrom, Subscription};
use messaging_kafka::KafkaBroker;

fn subscription(group: &str, topic: &str, start: StartFrom) -> Subscription {
    Subscription {
        group: group.to_owned(),
        topics: vec![topic.to_owned()],
        start,
        prefetch: 100,
    }
}

fn bodies(messages: &[std::sync::Arc<messaging_core::Message>]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_reads_every_partition_from_the_beginning_without_consuming() {
    let broker = connect(3).await;
    let topic = unique("browse");
    assert!(
        broker.browse(&topic, 10).await.unwrap().is_empty(),
        "a missing topic has nothing"
    );
    for i in 0..9 {
        broker
            .publish(OutgoingMessage::new(&topic, format!("m{i}")).with_key(format!("k{i}")))
            .await
            .unwrap();
    }
    let all = broker.browse(&topic, 100).await.unwrap();
    let got: BTreeSet<String> = all
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(got, (0..9).map(|i| format!("m{i}")).collect());
    let positions: Vec<String> = all.iter().map(|m| m.position.to_string()).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted, "ordered by partition and offset");
    assert_eq!(broker.browse(&topic, 4).await.unwrap().len(), 4);
    // Browsing twice sees the same: nothing was consumed or committed.
    assert_eq!(broker.browse(&topic, 100).await.unwrap().len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_at_the_end_or_the_beginning() {
    let broker = connect(3).await;
    let topic = unique("start");
    broker
        .publish(OutgoingMessage::new(&topic, "before"))
        .await
        .unwrap();

    // Subscribing returns once positioned: what is published next is read, what came before
    // is not (latest), or is (earliest).
    let mut latest = broker
        .subscribe(subscription(&unique("latest"), &topic, StartFrom::Latest))
        .await
        .unwrap();
    let mut earliest = broker
        .subscribe(subscription(
            &unique("earliest"),
            &topic,
            StartFrom::Earliest,
        ))
        .await
        .unwrap();
    broker
        .publish(OutgoingMessage::new(&topic, "after"))
        .await
        .unwrap();

    let got = tokio::time::timeout(Duration::from_secs(30), latest.next_batch(10))
        .await
        .expect("a batch")
        .unwrap();
    assert_eq!(bodies(&got), BTreeSet::from(["after".to_owned()]));
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let got = tokio::time::timeout(Duration::from_secs(30), earliest.next_batch(10))
            .await
            .expect("a batch")
            .unwrap();
        seen.extend(bodies(&got));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["before".to_owned(), "after".to_owned()])
    );
    latest.close().await.unwrap();
    earliest.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_offsets_survive_a_restart_of_the_group() {
    let broker = connect(1).await;
    let topic = unique("restart");
    let group = unique("restart");
    for i in 0..4 {
        broker
            .publish(OutgoingMessage::new(&topic, format!("m{i}")))
            .await
            .unwrap();
    }
    let mut consumer = broker
        .subscribe(subscription(&group, &topic, StartFrom::Earliest))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(
            tokio::time::timeout(Duration::from_secs(30), consumer.next_batch(10))
                .await
                .expect("a batch")
                .unwrap(),
        );
    }
    // Acknowledge m0, m1 and m3; m2 stays unfinished.
    let acker = consumer.acker();
    for m in got.iter().filter(|m| &m.payload[..] != b"m2") {
        acker.ack(m).await.unwrap();
    }
    consumer.close().await.unwrap();

    let mut again = broker
        .subscribe(subscription(&group, &topic, StartFrom::Earliest))
        .await
        .unwrap();
    let mut redelivered = Vec::new();
    while redelivered.len() < 2 {
        redelivered.extend(
            tokio::time::timeout(Duration::from_secs(30), again.next_batch(10))
                .await
                .expect("a batch")
                .unwrap(),
        );
    }
    // Reading resumes at the first unfinished message; m3 comes again (at least once).
    assert_eq!(
        bodies(&redelivered),
        BTreeSet::from(["m2".to_owned(), "m3".to_owned()])
    );
    again.close().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_cluster_fails_the_connection() {
    // Nothing listens on port 1.
    let started = std::time::Instant::now();
    let error = KafkaBroker::connect_with_properties(
        "127.0.0.1:1",
        [("messaging.connect.timeout.ms", "1500")],
    )
    .await
    .expect_err("nothing listens there");
    assert!(matches!(error, BrokerError::Connection { .. }), "{error:?}");
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_options_are_refused_before_connecting() {
    let error = KafkaBroker::connect_with_properties(
        common::BOOTSTRAP,
        [("messaging.topic.partitions", "none")],
    )
    .await
    .expect_err("not a number");
    assert!(
        error.to_string().contains("messaging.topic.partitions"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_factory_is_registered_as_kafka() {
    assert!(messaging_core::linked_backends().contains(&"kafka"));
    let config = messaging_core::Config::default()
        .with_backend("kafka")
        .setting("KAFKA_BOOTSTRAP_SERVERS", common::BOOTSTRAP);
    let broker = messaging_core::broker::connect_once(&config)
        .await
        .expect("connects through the registry");
    assert_eq!(broker.name(), "kafka");
    let _ = KafkaBroker::connect; // the typed constructor stays public
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_settings_create_topics_with_the_broker_default_replication() {
    let broker = KafkaBroker::connect(common::BOOTSTRAP)
        .await
        .expect("connects");
    let topic = unique("defaults");
    broker
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .expect("created with replication factor -1");
    broker
        .publish(OutgoingMessage::new(&topic, "x"))
        .await
        .unwrap();
    assert_eq!(broker.browse(&topic, 10).await.unwrap().len(), 1);
}
