//! The RabbitMQ backend's own behaviour, below the runtime: topology, wire format, batches,
//! acknowledgements across a lost channel, browsing. Needs RabbitMQ on 127.0.0.1:5672.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Names, close_connections, connection_pids, queue_counts};
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use messaging_core::message::header;
use messaging_core::{
    Broker, BrokerError, Config, Message, OutgoingMessage, Position, StartFrom, Subscription,
};
use messaging_rabbit::RabbitBroker;

fn subscription(group: &str, topics: &[&str], prefetch: usize) -> Subscription {
    Subscription {
        group: group.to_owned(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        start: StartFrom::Latest,
        prefetch,
    }
}

async fn cleanup(broker: &RabbitBroker, groups: &[String], kept: &[String]) {
    for group in groups {
        broker
            .delete_queue(&broker.group_queue(group).unwrap())
            .await
            .unwrap();
    }
    for topic in kept {
        broker
            .delete_queue(&broker.topic_queue(topic).unwrap())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registered_factory_connects_by_name() {
    assert!(messaging_core::linked_backends().contains(&"rabbitmq"));
    let config = Config::default()
        .with_backend("rabbitmq")
        .setting("RABBITMQ_URL", common::URL);
    let broker = messaging_core::broker::connect_once(&config)
        .await
        .expect("connects as configured");
    assert_eq!(broker.name(), "rabbitmq");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_connection_error() {
    let error = RabbitBroker::connect_url("amqp://guest:guest@127.0.0.1:1/%2f")
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::Connection { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_each_get_every_message_and_keys_and_headers_survive() {
    let n = Names::new("groups");
    let broker = n.broker().await;
    let topic = n.topic("orders.created");
    let (a, b) = (n.group("a"), n.group("b"));
    let mut ca = broker
        .subscribe(subscription(&a, &[&topic], 10))
        .await
        .unwrap();
    let mut cb = broker
        .subscribe(subscription(&b, &[&topic], 10))
        .await
        .unwrap();
    let sent = OutgoingMessage::new(&topic, &b"{\"id\":1}"[..])
        .with_key("k-1")
        .with_header(header::EVENT_NAME, "order.created")
        .with_header("x-custom", "v");
    broker.publish(sent.clone()).await.unwrap();
    for consumer in [&mut ca, &mut cb] {
        let batch = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.len(), 1);
        let m = &batch[0];
        assert_eq!(m.topic, topic);
        assert_eq!(m.key_str(), Some("k-1"));
        assert_eq!(&m.payload[..], &sent.payload[..]);
        assert_eq!(
            m.headers, sent.headers,
            "headers exactly as sent, the key not among them"
        );
        assert!(matches!(m.position, Position::DeliveryTag(_)));
        consumer.acker().ack(m).await.unwrap();
    }
    cleanup(&broker, &[a, b], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_empty_topics_are_refused_everywhere() {
    let n = Names::new("wild");
    let broker = n.broker().await;
    for topic in [format!("{}.*", n.id), format!("{}.#", n.id), String::new()] {
        let error = broker
            .subscribe(subscription(&n.group("g"), &[&topic], 1))
            .await
            .err()
            .expect("subscribe refused");
        assert!(error.to_string().contains("invalid topic"), "{error}");
        let error = broker
            .publish(OutgoingMessage::new(&topic, "x"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid topic"), "{error}");
        let error = broker
            .declare_topics(std::slice::from_ref(&topic))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("invalid topic"), "{error}");
    }
    // The connection is still usable: a refusal is not a connection failure.
    let ok = n.topic("fine");
    broker
        .declare_topics(std::slice::from_ref(&ok))
        .await
        .unwrap();
    broker
        .publish(OutgoingMessage::new(&ok, "x"))
        .await
        .unwrap();
    cleanup(&broker, &[], &[ok]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_what_is_buffered_within_the_prefetch() {
    let n = Names::new("prefetch");
    let broker = n.broker().await;
    let topic = n.topic("t");
    let group = n.group("g");
    let mut consumer = broker
        .subscribe(subscription(&group, &[&topic], 5))
        .await
        .unwrap();
    for i in 0..20u32 {
        broker
            .publish(OutgoingMessage::new(&topic, i.to_string()))
            .await
            .unwrap();
    }
    // The broker has handed the consumer its prefetch of 5 (and holds the other 15).
    let queue = broker.group_queue(&group).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = queue_counts(&queue);
        if counts == Some((15, 5)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for 15 ready and 5 unacknowledged on {queue}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = consumer.next_batch(100).await.unwrap();
    assert_eq!(first.len(), 5, "five unacknowledged at most");
    let more = tokio::time::timeout(Duration::from_millis(500), consumer.next_batch(100)).await;
    assert!(
        more.is_err(),
        "nothing beyond the prefetch until something is acknowledged"
    );
    let acker = consumer.acker();
    for m in &first {
        acker.ack(m).await.unwrap();
    }
    let mut seen: Vec<String> = first
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    while seen.len() < 20 {
        let batch = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(3))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !batch.is_empty() && batch.len() <= 3,
            "{} messages for max 3",
            batch.len()
        );
        for m in &batch {
            acker.ack(m).await.unwrap();
            seen.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }
    let expected: Vec<String> = (0..20).map(|i: u32| i.to_string()).collect();
    assert_eq!(seen, expected, "in publishing order, each once");
    cleanup(&broker, &[group], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_next_batch_loses_nothing() {
    let n = Names::new("cancel");
    let broker = n.broker().await;
    let topic = n.topic("t");
    let group = n.group("g");
    let mut consumer = broker
        .subscribe(subscription(&group, &[&topic], 50))
        .await
        .unwrap();
    const N: usize = 300;
    let publisher = {
        let broker = broker.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..N {
                broker
                    .publish(OutgoingMessage::new(&topic, i.to_string()))
                    .await
                    .unwrap();
            }
        })
    };
    let acker = consumer.acker();
    let mut seen = Vec::new();
    let mut dropped = 0;
    let mut round = 0u64;
    while seen.len() < N {
        round += 1;
        // Deadlines from 0 to 500 µs: many futures are dropped while waiting.
        let deadline = Duration::from_micros(round * 37 % 500);
        match tokio::time::timeout(deadline, consumer.next_batch(7)).await {
            Ok(batch) => {
                for m in batch.unwrap() {
                    acker.ack(&m).await.unwrap();
                    seen.push(
                        String::from_utf8_lossy(&m.payload)
                            .parse::<usize>()
                            .unwrap(),
                    );
                }
            }
            Err(_) => dropped += 1,
        }
        assert!(round < 1_000_000, "stuck with {} of {N}", seen.len());
    }
    publisher.await.unwrap();
    assert!(dropped > 0, "the test dropped no future");
    assert_eq!(
        seen,
        (0..N).collect::<Vec<_>>(),
        "each message once, in order"
    );
    cleanup(&broker, &[group], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_after_the_channel_died_fails_and_the_message_comes_back() {
    let n = Names::new("deadack");
    let broker = n.broker().await;
    let topic = n.topic("t");
    let group = n.group("g");
    let mut consumer = broker
        .subscribe(subscription(&group, &[&topic], 10))
        .await
        .unwrap();
    broker
        .publish(OutgoingMessage::new(&topic, "once"))
        .await
        .unwrap();
    let held = consumer.next_batch(10).await.unwrap().remove(0);

    let consumer_connection = format!("{} consumer {group}", n.connection());
    assert_eq!(
        close_connections(&consumer_connection).await.len(),
        1,
        "the consumer's connection was found"
    );
    let error = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(10))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, BrokerError::Connection { .. }), "{error}");
    let error = consumer.acker().ack(&held).await.unwrap_err();
    assert!(error.to_string().contains("redeliver"), "{error}");

    // The next fetch reconnects and RabbitMQ hands the message out again.
    let again = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(&again[0].payload[..], b"once");
    // An old delivery never acknowledges the new one that may share its tag.
    assert!(consumer.acker().ack(&held).await.is_err());
    consumer.acker().ack(&again[0]).await.unwrap();
    let after = tokio::time::timeout(Duration::from_millis(500), consumer.next_batch(10)).await;
    assert!(after.is_err(), "acknowledged: not delivered a third time");
    assert_eq!(
        connection_pids(&consumer_connection).len(),
        1,
        "one consumer connection again"
    );
    cleanup(&broker, &[group], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_reconnects_after_its_connection_is_closed() {
    let n = Names::new("pubre");
    let broker = n.broker().await;
    let topic = n.topic("t");
    broker
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    broker
        .publish(OutgoingMessage::new(&topic, "before"))
        .await
        .unwrap();
    let publisher = format!("{} publisher", n.connection());
    assert_eq!(close_connections(&publisher).await.len(), 1);
    // No error reaches the caller: the lost channel is noticed and a new one opened.
    broker
        .publish(OutgoingMessage::new(&topic, "after"))
        .await
        .unwrap();
    let kept: Vec<_> = broker
        .browse(&topic, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(kept, vec!["before", "after"]);
    cleanup(&broker, &[], &[topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_topics_are_browsed_without_being_consumed() {
    let n = Names::new("browse");
    let broker = n.broker().await;
    let topic = n.topic("orders.dlq");
    assert!(
        broker.browse(&topic, 10).await.unwrap().is_empty(),
        "never declared: nothing kept"
    );
    broker
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    for i in 0..3 {
        broker
            .publish(OutgoingMessage::new(&topic, format!("r{i}")).with_key("k"))
            .await
            .unwrap();
    }
    let two = broker.browse(&topic, 2).await.unwrap();
    assert_eq!(
        two.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(),
        [&b"r0"[..], b"r1"]
    );
    assert_eq!(two[0].key_str(), Some("k"));
    let all = broker.browse(&topic, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(),
        [&b"r0"[..], b"r1", b"r2"],
        "still there, in order"
    );
    cleanup(&broker, &[], &[topic]).await;
}

/// What another AMQP client sees: persistent messages, string headers, the key as a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_format_is_persistent_with_string_headers() {
    let n = Names::new("wire");
    let broker = n.broker().await;
    let topic = n.topic("t");
    broker
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    let sent = OutgoingMessage::new(&topic, "body")
        .with_key("k-7")
        .with_header(header::EVENT_ID, "0190-id")
        .with_header(header::ATTEMPT, "3");
    broker.publish(sent).await.unwrap();

    let raw = Connection::connect(common::URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = raw.create_channel().await.unwrap();
    let queue = broker.topic_queue(&topic).unwrap();
    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message is kept");
    let properties = &got.delivery.properties;
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some("0190-id")
    );
    let headers = properties.headers().as_ref().expect("headers").inner();
    for (name, value) in [
        (header::KEY, "k-7"),
        (header::EVENT_ID, "0190-id"),
        (header::ATTEMPT, "3"),
    ] {
        assert_eq!(
            headers.get(name),
            Some(&AMQPValue::LongString(LongString::from(value))),
            "{name}"
        );
    }
    assert_eq!(got.delivery.routing_key.as_str(), topic);
    cleanup(&broker, &[], &[topic]).await;
}

/// Headers of other types, from other clients, arrive as text (long strings as their bytes);
/// nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_headers_of_any_type_arrive_as_text() {
    let n = Names::new("foreign");
    let broker = n.broker().await;
    let topic = n.topic("t");
    let group = n.group("g");
    let mut consumer = broker
        .subscribe(subscription(&group, &[&topic], 10))
        .await
        .unwrap();

    let raw = Connection::connect(common::URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = raw.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(header::ATTEMPT.into(), AMQPValue::LongInt(2));
    headers.insert("x-flag".into(), AMQPValue::Boolean(true));
    headers.insert(
        "x-bytes".into(),
        AMQPValue::LongString(LongString::from(&b"a\xffb"[..])),
    );
    headers.insert(header::KEY.into(), AMQPValue::LongString("key-9".into()));
    headers.insert(
        "x-list".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongLongInt(-1), AMQPValue::Timestamp(7)].into()),
    );
    let mut nested = FieldTable::default();
    nested.insert("n".into(), AMQPValue::Double(0.5));
    headers.insert("x-nested".into(), AMQPValue::FieldTable(nested));
    channel
        .basic_publish(
            broker.options().exchange_name().into(),
            topic.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let m: Arc<Message> = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(1))
        .await
        .unwrap()
        .unwrap()
        .remove(0);
    assert_eq!(
        m.previous_attempts(),
        2,
        "an integer attempt header still counts"
    );
    assert_eq!(m.header("x-flag"), Some("true"));
    assert_eq!(
        m.headers.get_bytes("x-bytes"),
        Some(&b"a\xffb"[..]),
        "a long string keeps its bytes"
    );
    assert_eq!(m.header("x-nested"), Some("{n: 0.5}"));
    assert_eq!(m.header("x-list"), Some("[-1, 7]"));
    assert_eq!(m.key_str(), Some("key-9"));
    let names: HashSet<&str> = m.headers.keys().collect();
    assert!(
        !names.contains(header::KEY),
        "the key is not repeated among the headers"
    );
    consumer.acker().ack(&m).await.unwrap();
    cleanup(&broker, &[group], &[]).await;
}

/// `dlq replay` takes a snapshot rather than subscribing, so no group is special any more: a
/// group subscribed to a DLQ topic (as the replay group once was) has a queue of its own,
/// gets what is published after it joined and leaves the records kept in the DLQ queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_group_drains_the_kept_queue() {
    let n = Names::new("replay");
    let broker = n.broker().await;
    let dlq = n.topic("orders.dlq");
    broker
        .declare_topics(std::slice::from_ref(&dlq))
        .await
        .unwrap();
    for i in 0..3 {
        broker
            .publish(OutgoingMessage::new(&dlq, format!("record {i}")))
            .await
            .unwrap();
    }
    let group = n.group("messaging-dlq-replay");
    let old_replay_group = Subscription {
        start: StartFrom::Earliest,
        ..subscription(&group, &[&dlq], 64)
    };
    let mut consumer = broker.subscribe(old_replay_group).await.unwrap();
    broker
        .publish(OutgoingMessage::new(&dlq, "record 3"))
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(64))
        .await
        .unwrap()
        .unwrap();
    let got: Vec<_> = batch
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(got, ["record 3"], "only what was published after joining");
    for m in &batch {
        consumer.acker().ack(m).await.unwrap();
    }
    consumer.close().await.unwrap();
    let kept: Vec<_> = broker
        .browse(&dlq, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(kept, ["record 0", "record 1", "record 2", "record 3"]);
    cleanup(&broker, &[group], &[dlq]).await;
}
