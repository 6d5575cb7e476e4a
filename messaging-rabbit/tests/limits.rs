//! Issue 22 on RabbitMQ: nothing published is dropped in silence (a publish no queue is
//! bound to fails), and retries that could outlast the server's `consumer_timeout` are
//! refused at start-up. Needs RabbitMQ on 127.0.0.1:5672.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Names, URL};
use messaging_core::broker::{StartFrom, Subscription};
use messaging_core::{
    Broker, BrokerError, Config, Error, HandlerSpec, Invocation, Producer, RetryPolicy, Runtime,
};
use messaging_rabbit::{RabbitBroker, RabbitOptions};

fn producer(broker: &RabbitBroker) -> Producer {
    Producer::new(broker.clone().into_dyn(), Config::default())
}

/// Done-when 7: `send` to a topic no queue is bound to returns an error naming the topic;
/// once a group's queue is bound, the same `send` succeeds and the group gets the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_no_queue_is_bound_to_fails_and_one_a_group_reads_succeeds() {
    let n = Names::new("unroutable");
    let broker = n.broker().await;
    let topic = n.topic("nobody");
    let producer = producer(&broker);

    let error = producer
        .send(&topic, &serde_json::json!({"lost": true}))
        .await
        .expect_err("a message no queue is bound to is not confirmed as sent");
    let text = error.to_string();
    assert!(text.contains(&topic), "{text}");
    assert!(text.contains("no queue is bound"), "{text}");
    assert!(text.contains("not stored"), "{text}");
    // A refusal of the message, not a lost connection: the next publish goes through.
    assert!(
        !matches!(error, Error::Broker(BrokerError::Connection { .. })),
        "{error:?}"
    );

    let group = n.group("g");
    let mut consumer = broker
        .subscribe(Subscription {
            group: group.clone(),
            topics: vec![topic.clone()],
            start: StartFrom::Latest,
            prefetch: 8,
        })
        .await
        .unwrap();
    producer
        .send(&topic, &serde_json::json!({"kept": true}))
        .await
        .expect("a group's queue is bound: the send is confirmed");
    let batch = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(8))
        .await
        .expect("the group receives the message")
        .unwrap();
    let payloads: Vec<_> = batch
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(payloads, [r#"{"kept":true}"#], "only the routable message");
    for m in &batch {
        consumer.acker().ack(m).await.unwrap();
    }
    consumer.close().await.unwrap();
    broker
        .delete_queue(&broker.group_queue(&group).unwrap())
        .await
        .unwrap();
}

/// A declared topic (the DLQ topics the runtime declares) is kept with no group, so the
/// framework's own publishes to it still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_topic_takes_publishes_with_no_group() {
    let n = Names::new("declared");
    let broker = n.broker().await;
    let topic = n.topic("orders.dlq");
    broker
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    producer(&broker)
        .send(&topic, "record")
        .await
        .expect("kept");
    let kept = broker.browse(&topic, 10).await.unwrap();
    assert_eq!(kept.len(), 1);
    broker
        .delete_queue(&broker.topic_queue(&topic).unwrap())
        .await
        .unwrap();
}

/// A handler on `topic` with these retries, recording nothing.
fn handler(name: &str, topic: &str, group: &str, retry: RetryPolicy) -> HandlerSpec {
    HandlerSpec::new(name, [topic.to_owned()], |_inv: Invocation| async {
        Ok::<(), messaging_core::HandlerError>(())
    })
    .group(group)
    .retry(retry)
}

async fn start(broker: Arc<dyn Broker>, handlers: Vec<HandlerSpec>) -> Result<Runtime, Error> {
    let mut builder = Runtime::builder()
        .broker(broker)
        .without_registered()
        .install_global_producer(false);
    for h in handlers {
        builder = builder.handler(h);
    }
    builder.start().await
}

/// Retries that could hold a message for 40 minutes (2 × 20 min) outlast RabbitMQ's default
/// `consumer_timeout` of 30 minutes: the runtime refuses to start, naming the handler and
/// the limit; short retries start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_longer_than_the_consumer_timeout_are_refused_at_start_up() {
    let n = Names::new("ctimeout");
    let broker = n.broker().await;
    assert_eq!(
        broker.max_unacknowledged(),
        Some(Duration::from_secs(30 * 60))
    );
    let (topic, group) = (n.topic("t"), n.group("g"));
    let slow = handler(
        "slow_retries",
        &topic,
        &group,
        RetryPolicy::new(2, Duration::from_secs(20 * 60)),
    );
    let quick = handler(
        "quick_retries",
        &topic,
        &n.group("other"),
        RetryPolicy::new(3, Duration::from_secs(5)),
    );
    let error = match start(broker.clone().into_dyn(), vec![quick.clone(), slow]).await {
        Ok(_) => panic!("a runtime with 40 min of retries started"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("slow_retries"), "{error}");
    assert!(!error.contains("quick_retries"), "{error}");
    assert!(error.contains("30m"), "{error}");

    let runtime = start(broker.clone().into_dyn(), vec![quick])
        .await
        .expect("short retries start");
    runtime.shutdown().await.unwrap();
    broker
        .delete_queue(&broker.group_queue(&n.group("other")).unwrap())
        .await
        .unwrap();
}

/// `?consumer_timeout=` in the URL sets the limit (it must match the server's), `off` lifts
/// it, and a value without a unit is a configuration error naming `RABBITMQ_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_timeout_comes_from_the_url() {
    let n = Names::new("ctimeout-url");
    let (topic, group) = (n.topic("t"), n.group("g"));
    let connect = |query: &str| {
        let options = RabbitOptions::new(format!("{URL}?{query}")).connection_name(n.connection());
        RabbitBroker::connect(options)
    };
    let minute = connect("consumer_timeout=1m").await.unwrap();
    assert_eq!(minute.max_unacknowledged(), Some(Duration::from_secs(60)));
    let error = match start(
        minute.into_dyn(),
        vec![handler(
            "a_minute_of_retries",
            &topic,
            &group,
            RetryPolicy::new(2, Duration::from_secs(30)),
        )],
    )
    .await
    {
        Ok(_) => panic!("a minute of retries started under a 1 min consumer_timeout"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("a_minute_of_retries"), "{error}");

    let off = connect("heartbeat=5&consumer_timeout=off").await.unwrap();
    assert_eq!(off.max_unacknowledged(), None);

    match connect("consumer_timeout=1800000").await {
        Ok(_) => panic!("a consumer_timeout without a unit was taken"),
        Err(BrokerError::Config {
            variable, message, ..
        }) => {
            assert_eq!(variable, "RABBITMQ_URL");
            assert!(message.contains("consumer_timeout=1800000"), "{message}");
        }
        Err(other) => panic!("not a configuration error: {other}"),
    }
}
