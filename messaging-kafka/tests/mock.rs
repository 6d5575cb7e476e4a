//! Failures injected with librdkafka's mock cluster (no broker needed): a cluster that goes
//! down and comes back. The mock cluster does not implement topic creation, so its topics
//! are made with its own API, which also shows that existing topics need no creation right.
//!
//! Run with: cargo test -p messaging-kafka --test mock

use std::time::{Duration, Instant};

use messaging_core::{Broker, BrokerError, OutgoingMessage};
use messaging_kafka::KafkaBroker;
use rdkafka::mocking::MockCluster;

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
