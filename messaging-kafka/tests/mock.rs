//! Failures injected with librdkafka's mock cluster (no broker needed): a cluster that goes
//! down and comes back, a consumer fenced for good. The mock cluster does not implement topic creation, so its topics
//! are made with its own API, which also shows that existing topics need no creation right.
//!
//! Run with: cargo test -p messaging-kafka --test mock

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging_core::{Broker, BrokerError, Config, HandlerSpec, OutgoingMessage, Runtime};
use messaging_kafka::KafkaBroker;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_down_cluster_fails_as_a_lost_connection_then_recovers() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 3, 1).unwrap();
    let broker = KafkaBroker::connect_with_properties(
        &cluster.bootstrap_servers(),
        // Give up on an undeliverable message quickly.
        [("message.timeout.ms", "1500")],
    )
    .await
    .expect("the mock cluster answers");
    let started = Instant::now();
    broker
        .declare_topics(&["orders".to_owned()])
        .await
        .expect("an existing topic is not created again");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    broker
        .publish(OutgoingMessage::new("orders", "1"))
        .await
        .expect("delivered while up");

    cluster.broker_down(1).unwrap();
    let error = broker
        .publish(OutgoingMessage::new("orders", "2"))
        .await
        .expect_err("nothing can take it");
    assert!(matches!(error, BrokerError::Connection { .. }), "{error:?}");

    cluster.broker_up(1).unwrap();
    // The client reconnects with back-off; a publish goes through again within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match broker.publish(OutgoingMessage::new("orders", "3")).await {
            Ok(()) => break,
            Err(error) => assert!(Instant::now() < deadline, "not back: {error}"),
        }
    }
}

/// The mock cluster answers one heartbeat with `FENCED_INSTANCE_ID` (what a static member
/// gets once another joins with its `group.instance.id`): librdkafka declares the consumer's
/// client dead. The runtime reports it on the group's readiness, builds a new consumer, and
/// everything published afterwards is handled; what was handled before is not lost either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_consumer_is_replaced_and_what_is_published_next_is_handled() {
    const TOPIC: &str = "fenced.orders";
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    cluster
        .create_topic(&messaging_core::dlq::default_dlq_topic(TOPIC), 1, 1)
        .unwrap();
    let broker = KafkaBroker::connect_with_properties(
        &cluster.bootstrap_servers(),
        [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("auto.commit.interval.ms", "200"),
        ],
    )
    .await
    .expect("the mock cluster answers");
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let handler = HandlerSpec::new("record", [TOPIC], {
        let calls = Arc::clone(&calls);
        move |inv| {
            let body = String::from_utf8_lossy(&inv.message.payload).into_owned();
            calls.lock().unwrap().push(body);
            async { Ok(()) }
        }
    });
    let runtime = Runtime::builder()
        .broker(broker.clone().into_dyn())
        .config(Config::default())
        .without_registered()
        .install_global_producer(false)
        .from_beginning(true)
        .concurrency(2)
        .handler(handler)
        .start()
        .await
        .expect("runtime starts");
    let handled = |body: &str| calls.lock().unwrap().iter().any(|c| c == body);
    let readiness = || runtime.connection().groups()[0].1.clone();
    until("the member consumes", || readiness().is_ready()).await;
    let before: Vec<String> = (0..10).map(|n| format!("before-{n}")).collect();
    for body in &before {
        broker
            .publish(OutgoingMessage::new(TOPIC, body.clone().into_bytes()).with_key(body.clone()))
            .await
            .expect("published");
    }
    until("the first messages", || before.iter().all(|b| handled(b))).await;

    let dead = readiness();
    cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID],
    );
    until("the readiness reports the dead client", || {
        !dead.is_ready()
            && dead
                .problems_older_than(Duration::ZERO)
                .iter()
                .any(|p| p.contains("consumer") && p.contains("client unusable"))
    })
    .await;
    until("a new consumer, consuming", || {
        let now = readiness();
        now.is_ready()
            && !now
                .problems_older_than(Duration::ZERO)
                .iter()
                .any(|p| p.contains("client unusable"))
    })
    .await;

    let after: Vec<String> = (0..10).map(|n| format!("after-{n}")).collect();
    for body in &after {
        broker
            .publish(OutgoingMessage::new(TOPIC, body.clone().into_bytes()).with_key(body.clone()))
            .await
            .expect("published");
    }
    until("what was published after, through the new consumer", || {
        after.iter().all(|b| handled(b))
    })
    .await;
    assert!(before.iter().all(|b| handled(b)));
    tokio::time::timeout(Duration::from_secs(30), runtime.shutdown())
        .await
        .expect("shuts down")
        .expect("cleanly");
}

/// Waits up to 60 s for `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
