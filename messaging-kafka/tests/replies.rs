//! Request-reply's Kafka side (issue 24): a service's reply topic, read whole by each of its
//! instances from where it stood when the inbox opened, and replies published with their
//! correlation id as key, which keeps a streamed reply in order.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test replies

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{BOOTSTRAP, committed, connect, connect_as, unique};
use messaging_core::message::header;
use messaging_core::reply::{ReplyInbox, ReplyKind};
use messaging_core::{Broker, BrokerError, Message, OutgoingMessage, Position};
use messaging_kafka::settings::default_reply_topic;
use messaging_kafka::{KafkaBroker, REPLY_INBOX_GROUP};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

/// How long a reply may take to arrive.
const PATIENCE: Duration = Duration::from_secs(30);

/// A reply as a responder publishes it: to the request's `x-reply-to`, keyed and headed
/// with its correlation id.
fn reply(
    to: &str,
    correlation: &str,
    kind: ReplyKind,
    body: impl Into<Vec<u8>>,
) -> OutgoingMessage {
    OutgoingMessage::new(to, body.into())
        .with_key(correlation.to_owned())
        .with_header(header::CORRELATION_ID, correlation.to_owned())
        .with_header(header::REPLY_KIND, kind.as_str())
}

/// The next reply of `inbox`; panics after [`PATIENCE`] or if the inbox closed.
async fn next(inbox: &mut ReplyInbox) -> Message {
    match tokio::time::timeout(PATIENCE, inbox.replies.recv()).await {
        Ok(Some(reply)) => reply,
        Ok(None) => panic!("the inbox closed"),
        Err(_) => panic!("no reply within {PATIENCE:?}"),
    }
}

fn correlation(reply: &Message) -> &str {
    reply
        .header(header::CORRELATION_ID)
        .expect("a correlation id")
}

fn partition(reply: &Message) -> i32 {
    match reply.position {
        Position::Partition { partition, .. } => partition,
        ref other => panic!("not a Kafka position: {other}"),
    }
}

fn text(reply: &Message) -> String {
    String::from_utf8(reply.payload.to_vec()).expect("text")
}

/// The topics of the cluster whose name contains `part`.
async fn topics_containing(part: &str) -> BTreeMap<String, usize> {
    let part = part.to_owned();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BOOTSTRAP)
            .create()
            .expect("metadata client");
        let metadata = client
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        metadata
            .topics()
            .iter()
            .filter(|t| t.name().contains(&part))
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect()
    })
    .await
    .unwrap()
}

/// The `retention.ms` of `topic`.
async fn retention_ms(topic: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()
        .expect("admin client");
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("configs described");
    let config = described
        .into_iter()
        .next()
        .expect("one topic")
        .expect("its config");
    config.get("retention.ms").and_then(|e| e.value.clone())
}

/// The consumer groups the cluster lists.
async fn groups() -> BTreeSet<String> {
    tokio::task::spawn_blocking(|| {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BOOTSTRAP)
            .create()
            .expect("group-list client");
        client
            .fetch_group_list(None, Duration::from_secs(10))
            .expect("group list")
            .groups()
            .iter()
            .map(|g| g.name().to_owned())
            .collect()
    })
    .await
    .unwrap()
}

/// A reply published the moment `open_replies` returned arrives, and nothing published
/// before it: replies of earlier rounds, several to a batch on the same partition (Tansu's
/// end offset falls inside such a batch), come neither before nor instead of it. Round 0
/// also has the responder create the reply topic (its requester never opened it yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_published_as_the_inbox_opens_arrives_and_none_older() {
    // A service name Kafka would refuse as a topic name.
    let source = format!("{} svc", unique("rr"));
    let topic = default_reply_topic(&source);
    assert!(topic.ends_with("_svc.replies"), "{topic}");
    let requester = connect_as(&source, 3, &[]).await;
    let responder = connect(3).await;
    for round in 0..5 {
        let id = format!("instance:{round}");
        let earlier = (0..10).map(|i| {
            responder.publish_reply(reply(&topic, &id, ReplyKind::Chunk, format!("old {i}")))
        });
        for outcome in futures::future::join_all(earlier).await {
            outcome.expect("earlier reply published");
        }
        let mut inbox = requester.open_replies().await.expect("inbox opened");
        assert_eq!(inbox.address, topic);
        responder
            .publish_reply(reply(&topic, &id, ReplyKind::Ok, "mine"))
            .await
            .expect("reply published");
        let got = next(&mut inbox).await;
        assert_eq!(
            (correlation(&got), text(&got).as_str()),
            (id.as_str(), "mine"),
            "round {round}: the reply, and no earlier one before it"
        );
        assert_eq!(got.key_str(), Some(id.as_str()));
        assert_eq!(ReplyKind::of(&got), Some(ReplyKind::Ok));
        assert_eq!(&*got.topic, topic);
    }
    assert_eq!(
        retention_ms(&topic).await.as_deref(),
        Some("3600000"),
        "created by a reply with bounded retention too"
    );
}

/// Two instances of one service share the reply topic, and each inbox gets every reply
/// (core keeps its own by correlation id); 100 chunks of one streamed reply arrive in order
/// on one partition in both, and replies with other keys spread over the partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_gets_every_reply_and_a_streamed_reply_in_order() {
    let source = unique("rr-two");
    let first = connect_as(&source, 3, &[]).await;
    let second = connect_as(&source, 3, &[]).await;
    let mut inboxes = [
        first.open_replies().await.expect("first inbox"),
        second.open_replies().await.expect("second inbox"),
    ];
    assert_eq!(inboxes[0].address, inboxes[1].address);
    let topic = inboxes[0].address.clone();
    let responder = connect(3).await;

    let mut expected: BTreeSet<String> = BTreeSet::new();
    for id in ["first:1", "second:1"] {
        responder
            .publish_reply(reply(&topic, id, ReplyKind::Ok, id))
            .await
            .expect("published");
        expected.insert(id.to_owned());
    }
    // Each handed to the producer as its future is made (in this order), then all awaited
    // together: librdkafka batches them as it likes.
    let stream = "first:2";
    let mut chunks: Vec<_> = (0..100)
        .map(|i| responder.publish_reply(reply(&topic, stream, ReplyKind::Chunk, format!("{i}"))))
        .collect();
    chunks.push(responder.publish_reply(reply(&topic, stream, ReplyKind::End, "")));
    for outcome in futures::future::join_all(chunks).await {
        outcome.expect("chunk published");
    }
    expected.insert(stream.to_owned());
    let spread = (0..20).map(|i| format!("second:{}", 10 + i));
    for outcome in futures::future::join_all(
        spread
            .clone()
            .map(|id| responder.publish_reply(reply(&topic, &id, ReplyKind::Ok, "spread"))),
    )
    .await
    {
        outcome.expect("published");
    }
    expected.extend(spread);
    let total = 2 + 101 + 20;

    for (n, inbox) in inboxes.iter_mut().enumerate() {
        let mut got = Vec::with_capacity(total);
        while got.len() < total {
            got.push(next(inbox).await);
        }
        let seen: BTreeSet<String> = got.iter().map(|r| correlation(r).to_owned()).collect();
        assert_eq!(seen, expected, "inbox {n} got every reply");
        for r in &got {
            assert_eq!(r.key_str(), Some(correlation(r)), "keyed by correlation id");
        }
        let streamed: Vec<&Message> = got.iter().filter(|r| correlation(r) == stream).collect();
        let bodies: Vec<String> = streamed.iter().map(|r| text(r)).collect();
        let mut in_order: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        in_order.push(String::new());
        assert_eq!(
            bodies, in_order,
            "inbox {n}: the chunks in order, then the end"
        );
        let kinds: Vec<Option<ReplyKind>> = streamed.iter().map(|r| ReplyKind::of(r)).collect();
        let mut expected_kinds = vec![Some(ReplyKind::Chunk); 100];
        expected_kinds.push(Some(ReplyKind::End));
        assert_eq!(kinds, expected_kinds, "inbox {n}: the kinds kept");
        let stream_partitions: BTreeSet<i32> = streamed.iter().map(|r| partition(r)).collect();
        assert_eq!(
            stream_partitions.len(),
            1,
            "one partition: {stream_partitions:?}"
        );
        let partitions: BTreeSet<i32> = got.iter().map(partition).collect();
        assert!(
            partitions.len() > 1,
            "inbox {n} read one partition only: {partitions:?}"
        );
    }
}

/// Opening inboxes again (on one client and on another of the same service) makes no
/// topic besides the reply topic, which has bounded retention, and no consumer group, nor
/// any committed offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_again_makes_no_topic_and_no_group() {
    let source = unique("rr-again");
    let broker = connect_as(&source, 3, &[]).await;
    let topic = default_reply_topic(&source);
    let mut first = broker.open_replies().await.expect("opened");
    let made = topics_containing(&source).await;
    assert_eq!(made, BTreeMap::from([(topic.clone(), 3)]));

    assert_eq!(retention_ms(&topic).await.as_deref(), Some("3600000"));

    let mut again = broker.open_replies().await.expect("opened again");
    let other = connect_as(&source, 3, &[]).await;
    let mut other_inbox = other
        .open_replies()
        .await
        .expect("opened on another client");
    broker
        .publish_reply(reply(&topic, "x:1", ReplyKind::Ok, "to all"))
        .await
        .expect("published");
    for inbox in [&mut first, &mut again, &mut other_inbox] {
        assert_eq!(correlation(&next(inbox).await), "x:1");
    }
    assert_eq!(topics_containing(&source).await, made, "no topic made");

    // The group list shows a group that committed (so an inbox's would show) ...
    let witness = unique("rr-witness");
    {
        let (witness, topic) = (witness.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", BOOTSTRAP)
                .set("group.id", &witness)
                .create()
                .expect("witness client");
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(&topic, 0, Offset::Offset(0))
                .unwrap();
            client
                .commit(&offsets, CommitMode::Sync)
                .expect("witness committed");
        })
        .await
        .unwrap();
    }
    let listed = groups().await;
    assert!(listed.contains(&witness), "{listed:?}");
    // ... and the inboxes' `group.id` is not there, nor are offsets committed under it.
    assert!(!listed.contains(REPLY_INBOX_GROUP), "{listed:?}");
    assert_eq!(committed(REPLY_INBOX_GROUP, &topic, 3).await, [None; 3]);
}

/// `KAFKA_REPLY_TOPIC` names the reply topic; a value Kafka would refuse is a configuration
/// error naming the variable, found before any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_topic_setting_is_used_and_a_bad_one_named() {
    let bad = "orders replies";
    let refused = KafkaBroker::from_config(
        &messaging_core::Config::default()
            .setting("KAFKA_BOOTSTRAP_SERVERS", BOOTSTRAP)
            .setting("KAFKA_REPLY_TOPIC", bad),
    )
    .await
    .expect_err("a topic name with a space");
    match refused {
        BrokerError::Config {
            variable, message, ..
        } => {
            assert_eq!(variable, "KAFKA_REPLY_TOPIC");
            assert!(message.contains(bad), "{message}");
        }
        other => panic!("not a configuration error: {other}"),
    }

    let chosen = unique("rr-chosen");
    let broker = connect_as("any-service", 2, &[("KAFKA_REPLY_TOPIC", &chosen)]).await;
    let mut inbox = broker.open_replies().await.expect("opened");
    assert_eq!(inbox.address, chosen);
    assert_eq!(topics_containing(&chosen).await.get(&chosen), Some(&2));
    broker
        .publish_reply(reply(&chosen, "c:1", ReplyKind::Ok, "here"))
        .await
        .expect("published");
    assert_eq!(text(&next(&mut inbox).await), "here");
}
