//! Request-reply on RabbitMQ (direct reply-to), below the runtime: our inbox with a foreign
//! AMQP RPC server, a foreign AMQP RPC client with our responder, several inboxes at once,
//! streamed replies, and replies whose requester is gone. Needs RabbitMQ on 127.0.0.1:5672.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Names, close_connections};
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use messaging_core::message::header;
use messaging_core::reply::{ReplyInbox, ReplyKind};
use messaging_core::{Broker, Consumer, Message, OutgoingMessage, StartFrom, Subscription};
use messaging_rabbit::{DIRECT_REPLY_TO, RabbitBroker};
use tokio::sync::mpsc;

/// How long anything that should happen may take.
const PATIENCE: Duration = Duration::from_secs(10);

fn subscription(group: &str, topic: &str) -> Subscription {
    Subscription {
        group: group.to_owned(),
        topics: vec![topic.to_owned()],
        start: StartFrom::Latest,
        prefetch: 20,
    }
}

/// A request as the core sends it: to `topic`, its replies to `inbox`.
fn request(topic: &str, inbox: &ReplyInbox, correlation_id: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(topic, body.to_owned())
        .with_header(header::REPLY_TO, inbox.address.as_str())
        .with_header(header::CORRELATION_ID, correlation_id)
        .with_header(header::DEADLINE, "2099-01-01T00:00:00Z")
}

/// Sends `request` the way the core does: through the inbox's publisher.
async fn send_request(broker: &RabbitBroker, inbox: &ReplyInbox, request: OutgoingMessage) {
    match &inbox.publisher {
        Some(publisher) => publisher.publish(request).await,
        None => broker.publish(request).await,
    }
    .expect("the request is confirmed");
}

async fn next_reply(inbox: &mut ReplyInbox) -> Message {
    tokio::time::timeout(PATIENCE, inbox.replies.recv())
        .await
        .expect("a reply arrives in time")
        .expect("the inbox stays open")
}

async fn next_message(consumer: &mut Box<dyn Consumer>) -> Arc<Message> {
    let mut batch = tokio::time::timeout(PATIENCE, consumer.next_batch(1))
        .await
        .expect("a message arrives in time")
        .expect("consuming works");
    assert_eq!(batch.len(), 1);
    let message = batch.remove(0);
    consumer.acker().ack(&message).await.unwrap();
    message
}

/// A connection of a foreign AMQP client, named after the test.
async fn foreign(n: &Names) -> Connection {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{} foreign", n.connection()).into());
    Connection::connect(common::URL, properties)
        .await
        .expect("RabbitMQ is reachable")
}

fn short(value: &str) -> ShortString {
    ShortString::from(value)
}

fn property(value: Option<&ShortString>) -> Option<&str> {
    value.map(ShortString::as_str)
}

/// Answers every request a subscription of `broker` to `topic` gets, with the request's
/// body, until the test ends; counts what it answered.
fn echo_responder(mut consumer: Box<dyn Consumer>, broker: RabbitBroker) -> mpsc::Receiver<()> {
    let (answered, count) = mpsc::channel(1024);
    tokio::spawn(async move {
        let acker = consumer.acker();
        loop {
            let Ok(batch) = consumer.next_batch(20).await else {
                return;
            };
            for message in batch {
                let address = message.header(header::REPLY_TO).expect("x-reply-to");
                let id = message
                    .header(header::CORRELATION_ID)
                    .expect("x-correlation-id");
                let reply = OutgoingMessage::new(address, message.payload.clone())
                    .with_header(header::CORRELATION_ID, id)
                    .with_header(header::REPLY_KIND, ReplyKind::Ok.as_str());
                broker.publish_reply(reply).await.expect("reply confirmed");
                acker.ack(&message).await.unwrap();
                if answered.send(()).await.is_err() {
                    return;
                }
            }
        }
    });
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_request_is_answered_by_a_foreign_amqp_rpc_server() {
    let n = Names::new("rr-foreign-server");
    let broker = n.broker().await;
    let topic = n.topic("rpc");

    // The foreign server: its own queue bound to our topic exchange, reading and answering
    // with the AMQP properties only, as the RabbitMQ RPC tutorial's server does.
    let server = foreign(&n).await;
    let channel = server.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(short(""), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            short(broker.options().exchange_name()),
            short(&topic),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut requests = channel
        .basic_consume(
            queue.name().clone(),
            short(""),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (seen_tx, mut seen) = mpsc::channel(1);
    let replying = channel.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
            let id = delivery.properties.correlation_id().clone();
            let body = format!("echo {}", String::from_utf8_lossy(&delivery.data));
            replying
                .basic_publish(
                    short(""),
                    reply_to.clone(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_correlation_id(id.clone().expect("id")),
                )
                .await
                .unwrap();
            let _ = seen_tx.send((reply_to, id)).await;
        }
    });

    let mut inbox = broker.open_replies().await.expect("an inbox opens");
    assert_eq!(inbox.address, DIRECT_REPLY_TO);
    assert!(
        inbox.publisher.is_some(),
        "requests go out on the inbox's channel"
    );
    send_request(
        &broker,
        &inbox,
        request(&topic, &inbox, "inst-a:1", "hello"),
    )
    .await;

    let (reply_to, id) = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .expect("the foreign server gets the request")
        .unwrap();
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "RabbitMQ gave the request the requester's direct reply-to address: {reply_to}"
    );
    assert_eq!(property(id.as_ref()), Some("inst-a:1"));

    let reply = next_reply(&mut inbox).await;
    assert_eq!(reply.header(header::CORRELATION_ID), Some("inst-a:1"));
    assert_eq!(&reply.payload[..], b"echo hello");
    assert_eq!(reply.header(header::REPLY_KIND), None);
    assert_eq!(ReplyKind::of(&reply), Some(ReplyKind::Ok));
    assert_eq!(reply.topic, DIRECT_REPLY_TO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_amqp_rpc_client_is_answered_by_our_responder() {
    let n = Names::new("rr-foreign-client");
    let broker = n.broker().await;
    let topic = n.topic("rpc");
    let group = n.group("responder");
    let mut consumer = broker
        .subscribe(subscription(&group, &topic))
        .await
        .unwrap();

    // The foreign client: direct reply-to, request properties only, no headers.
    let client = foreign(&n).await;
    let channel = client.create_channel().await.unwrap();
    let mut replies = channel
        .basic_consume(
            short(DIRECT_REPLY_TO),
            short(""),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            short(broker.options().exchange_name()),
            short(&topic),
            BasicPublishOptions::default(),
            b"{\"n\":7}",
            BasicProperties::default()
                .with_reply_to(short(DIRECT_REPLY_TO))
                .with_correlation_id(short("java-42")),
        )
        .await
        .unwrap();

    let request = next_message(&mut consumer).await;
    let address = request
        .header(header::REPLY_TO)
        .expect("reply_to became x-reply-to")
        .to_owned();
    assert!(address.starts_with("amq.rabbitmq.reply-to."), "{address}");
    assert_eq!(request.header(header::CORRELATION_ID), Some("java-42"));
    assert_eq!(&request.payload[..], b"{\"n\":7}");

    let reply = OutgoingMessage::new(&address, &b"{\"n\":8}"[..])
        .with_header(header::CORRELATION_ID, "java-42")
        .with_header(header::REPLY_KIND, ReplyKind::Ok.as_str());
    broker.publish_reply(reply).await.expect("reply confirmed");

    let delivery = tokio::time::timeout(PATIENCE, replies.next())
        .await
        .expect("the foreign client gets the reply")
        .unwrap()
        .unwrap();
    assert_eq!(
        property(delivery.properties.correlation_id().as_ref()),
        Some("java-42")
    );
    assert_eq!(&delivery.data[..], b"{\"n\":8}");
    let headers = string_headers(&delivery.properties);
    assert_eq!(headers.get(header::REPLY_KIND), Some("ok"));
    broker
        .delete_queue(&broker.group_queue(&group).unwrap())
        .await
        .unwrap();
}

fn string_headers(properties: &BasicProperties) -> messaging_core::Headers {
    properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(name, value)| {
                    value
                        .as_long_string()
                        .map(|v| (name.to_string(), v.as_bytes().to_vec()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_each_get_exactly_their_own_replies() {
    let n = Names::new("rr-two-inboxes");
    let topic = n.topic("rpc");
    let group = n.group("responder");
    let responder = n.broker().await;
    let consumer = responder
        .subscribe(subscription(&group, &topic))
        .await
        .unwrap();
    let mut answered = echo_responder(consumer, responder.clone());

    // Two instances: two brokers, two connections, two inboxes.
    let (one, two) = (n.broker().await, n.broker().await);
    let mut inbox_one = one.open_replies().await.unwrap();
    let mut inbox_two = two.open_replies().await.unwrap();
    const EACH: usize = 50;
    let ids =
        |instance: &str| -> Vec<String> { (0..EACH).map(|i| format!("{instance}:{i}")).collect() };
    let sends = ids("one")
        .into_iter()
        .map(|id| (&one, &inbox_one, id))
        .chain(ids("two").into_iter().map(|id| (&two, &inbox_two, id)))
        .map(|(broker, inbox, id)| {
            let topic = &topic;
            async move {
                send_request(broker, inbox, request(topic, inbox, &id, &id)).await;
            }
        });
    futures::future::join_all(sends).await;
    for _ in 0..2 * EACH {
        tokio::time::timeout(PATIENCE, answered.recv())
            .await
            .expect("the responder answers every request");
    }
    // A last request each: the responder answers in order on one channel, and RabbitMQ
    // keeps that order to each inbox, so once its reply is in, nothing else is on its way.
    for (broker, inbox, id) in [
        (&one, &inbox_one, "one:last"),
        (&two, &inbox_two, "two:last"),
    ] {
        send_request(broker, inbox, request(&topic, inbox, id, id)).await;
    }

    for (inbox, instance) in [(&mut inbox_one, "one"), (&mut inbox_two, "two")] {
        let mut got = BTreeSet::new();
        loop {
            let reply = next_reply(inbox).await;
            let id = reply.header(header::CORRELATION_ID).unwrap().to_owned();
            assert_eq!(reply.payload, id.as_bytes(), "the reply to {id}");
            if id == format!("{instance}:last") {
                break;
            }
            assert!(got.insert(id.clone()), "{id} arrived twice");
        }
        assert_eq!(
            got,
            ids(instance).into_iter().collect(),
            "{instance}'s replies"
        );
        assert!(
            inbox.replies.try_recv().is_err(),
            "{instance} got nothing more"
        );
    }
    responder
        .delete_queue(&responder.group_queue(&group).unwrap())
        .await
        .unwrap();
}

/// An open inbox of `broker` and the address its requests carry, as a responder sees it.
async fn inbox_with_address(
    n: &Names,
    broker: &RabbitBroker,
    responder: &RabbitBroker,
) -> (ReplyInbox, String) {
    let topic = n.topic("rpc");
    let group = n.group("responder");
    let mut consumer = responder
        .subscribe(subscription(&group, &topic))
        .await
        .unwrap();
    let inbox = broker.open_replies().await.unwrap();
    send_request(broker, &inbox, request(&topic, &inbox, "x:1", "{}")).await;
    let address = next_message(&mut consumer)
        .await
        .header(header::REPLY_TO)
        .unwrap()
        .to_owned();
    assert!(address.starts_with("amq.rabbitmq.reply-to."), "{address}");
    responder
        .delete_queue(&responder.group_queue(&group).unwrap())
        .await
        .unwrap();
    (inbox, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_arrives_in_order() {
    let n = Names::new("rr-stream");
    let broker = n.broker().await;
    let (mut inbox, address) = inbox_with_address(&n, &broker, &broker).await;

    const CHUNKS: usize = 100;
    for i in 0..CHUNKS {
        let chunk = OutgoingMessage::new(&address, i.to_string())
            .with_header(header::CORRELATION_ID, "x:1")
            .with_header(header::REPLY_KIND, ReplyKind::Chunk.as_str());
        broker.publish_reply(chunk).await.unwrap();
    }
    let end = OutgoingMessage::new(&address, "")
        .with_header(header::CORRELATION_ID, "x:1")
        .with_header(header::REPLY_KIND, ReplyKind::End.as_str());
    broker.publish_reply(end).await.unwrap();

    for i in 0..CHUNKS {
        let reply = next_reply(&mut inbox).await;
        assert_eq!(ReplyKind::of(&reply), Some(ReplyKind::Chunk), "reply {i}");
        assert_eq!(
            reply.payload,
            i.to_string().as_bytes(),
            "chunk {i} in order"
        );
        assert_eq!(reply.header(header::CORRELATION_ID), Some("x:1"));
    }
    let end = next_reply(&mut inbox).await;
    assert_eq!(ReplyKind::of(&end), Some(ReplyKind::End));
    assert!(end.payload.is_empty());
}

/// Whether RabbitMQ still knows `address` (a passive declare, as its documentation advises
/// a responder to check for a requester that went away).
async fn address_exists(connection: &Connection, address: &str) -> bool {
    let channel: Channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    // NOT_FOUND closes the disposable channel.
    channel
        .queue_declare(short(address), passive, FieldTable::default())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_requester_that_is_gone_is_not_an_error() {
    let n = Names::new("rr-gone");
    let (requester, responder) = (n.broker().await, n.broker().await);
    let (inbox, address) = inbox_with_address(&n, &requester, &responder).await;
    let checker = foreign(&n).await;
    assert!(address_exists(&checker, &address).await);

    // The requester drops its inbox: its channel closes, and its address is gone.
    drop(inbox);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while address_exists(&checker, &address).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped inbox's channel closes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reply = |to: &str| {
        OutgoingMessage::new(to, "{}")
            .with_header(header::CORRELATION_ID, "x:1")
            .with_header(header::REPLY_KIND, ReplyKind::Ok.as_str())
    };
    responder
        .publish_reply(reply(&address))
        .await
        .expect("a reply to a gone requester is dropped, not an error");
    // Nor an address RabbitMQ never gave, nor a classic reply queue that was deleted.
    responder
        .publish_reply(reply("amq.rabbitmq.reply-to.not-an-address"))
        .await
        .expect("an unknown direct reply-to address");
    responder
        .publish_reply(reply(&n.topic("deleted-reply-queue")))
        .await
        .expect("a missing reply queue");
    // The responder's channel survived them: a later reply reaches a live requester.
    let (mut inbox, address) = inbox_with_address(&n, &requester, &responder).await;
    responder.publish_reply(reply(&address)).await.unwrap();
    assert_eq!(
        next_reply(&mut inbox).await.header(header::CORRELATION_ID),
        Some("x:1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_closes_the_inbox_and_another_opens() {
    let n = Names::new("rr-lost");
    let broker = n.broker().await;
    let mut inbox = broker.open_replies().await.unwrap();
    let closed = close_connections(&n.connection()).await;
    assert!(!closed.is_empty(), "the test's connection was found");
    let end = tokio::time::timeout(PATIENCE, inbox.replies.recv())
        .await
        .expect("the inbox closes with its connection");
    assert!(end.is_none(), "no reply, the end: {end:?}");

    // The requester opens another, on a new publishing connection.
    let responder = n.broker().await;
    let (mut inbox, address) = inbox_with_address(&n, &broker, &responder).await;
    let reply = OutgoingMessage::new(&address, "{}").with_header(header::CORRELATION_ID, "x:1");
    responder.publish_reply(reply).await.unwrap();
    assert_eq!(
        next_reply(&mut inbox).await.header(header::CORRELATION_ID),
        Some("x:1")
    );
}
