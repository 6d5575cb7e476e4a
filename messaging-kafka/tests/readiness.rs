//! A Kafka member is ready once the group has assigned it partitions: a message published
//! from then on is received, even when it starts from the latest offset. Settings that can
//! never work fail at once, naming the variable to fix.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test readiness

mod common;

use std::time::{Duration, Instant};

use common::{BOOTSTRAP, eventually, unique};
use messaging_core::broker::{ConnectionState, connect_with_retry};
use messaging_core::{
    Broker, BrokerError, Config, Error, OutgoingMessage, StartFrom, Subscription,
};
use messaging_kafka::KafkaBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_pending_until_assigned_then_receives_what_is_published_next() {
    // `subscribe` returns at once, before the group assigns anything.
    let broker = KafkaBroker::connect_with_properties(
        BOOTSTRAP,
        [
            ("session.timeout.ms", "6000"),
            ("messaging.topic.replication.factor", "1"),
            ("messaging.join.timeout.ms", "0"),
        ],
    )
    .await
    .expect("Kafka is reachable at 127.0.0.1:9092 (run scripts/start-kafka.sh)");
    let topic = unique("signups");
    broker
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .expect("declared");
    let mut consumer = broker
        .subscribe(Subscription {
            group: unique("welcome"),
            topics: vec![topic.clone()],
            start: StartFrom::Latest,
            prefetch: 16,
        })
        .await
        .expect("subscribed");
    let readiness = consumer.readiness();
    assert!(!readiness.is_ready(), "pending before any assignment");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let fetching = tokio::spawn(async move {
        loop {
            let batch = consumer.next_batch(16).await.expect("fetched");
            for message in batch {
                if tx.send(message).is_err() {
                    return;
                }
            }
        }
    });
    eventually("the assignment", Duration::from_secs(60), || {
        readiness.is_ready()
    })
    .await;
    broker
        .publish(OutgoingMessage::new(&topic, "first").with_key("k"))
        .await
        .expect("published");
    let message = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the message published right after readiness arrives")
        .expect("a message");
    assert_eq!(&message.payload[..], b"first");
    fetching.abort();
}

/// The configuration `KAFKA_CONFIG_<NAME>` variables for these properties would give.
fn config(properties: &[(&str, &str)]) -> Config {
    let config = Config::default()
        .with_backend("kafka")
        .setting("KAFKA_BOOTSTRAP_SERVERS", BOOTSTRAP);
    properties.iter().fold(config, |config, (property, value)| {
        let variable = format!(
            "KAFKA_CONFIG_{}",
            property.to_ascii_uppercase().replace('.', "_")
        );
        config.setting(variable, *value)
    })
}

#[tokio::test]
async fn settings_that_can_never_work_fail_at_once_naming_the_variable() {
    for (property, value, variable) in [
        ("no.such.thing", "1", "KAFKA_CONFIG_NO_SUCH_THING"),
        (
            "session.timeout.ms",
            "banana",
            "KAFKA_CONFIG_SESSION_TIMEOUT_MS",
        ),
        (
            "enable.idempotence",
            "maybe",
            "KAFKA_CONFIG_ENABLE_IDEMPOTENCE",
        ),
        (
            "messaging.topic.partitions",
            "0",
            "KAFKA_CONFIG_MESSAGING_TOPIC_PARTITIONS",
        ),
    ] {
        let started = Instant::now();
        let error = KafkaBroker::from_config(&config(&[(property, value)]))
            .await
            .expect_err("refused");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{property}: at once"
        );
        match &error {
            BrokerError::Config {
                broker,
                variable: v,
                ..
            } => assert_eq!((*broker, v.as_str()), ("kafka", variable)),
            other => panic!("{property}={value}: not a configuration error: {other:?}"),
        }
        assert!(error.to_string().contains(property), "{error}");

        // The framework's connect loop gives up at once on it, even the one that otherwise
        // retries for ever (the consumer command's).
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(2),
            connect_with_retry(
                &config(&[(property, value)]),
                &ConnectionState::default(),
                true,
            ),
        )
        .await
        .expect("within 2 s");
        match outcome {
            Err(Error::Config { key, .. }) => assert_eq!(key, variable),
            Err(other) => panic!("{property}: {other}"),
            Ok(_) => panic!("{property}: connected"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test]
async fn an_unreachable_cluster_is_not_a_configuration_error() {
    let unreachable = config(&[("messaging.connect.timeout.ms", "500")])
        .setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1");
    let error = KafkaBroker::from_config(&unreachable)
        .await
        .expect_err("nobody listens there");
    assert!(!error.is_config(), "retryable: {error:?}");
}

/// The name of a configuration error's variable.
fn variable_of(error: &BrokerError) -> &str {
    match error {
        BrokerError::Config { variable, .. } => variable,
        other => panic!("not a configuration error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_property_librdkafka_refuses_names_the_clients_own_variable() {
    // The producer and the admin client are made by `connect`.
    for variable in [
        "KAFKA_PRODUCER_CONFIG_LINGER_MS",
        "KAFKA_ADMIN_CONFIG_SOCKET_TIMEOUT_MS",
    ] {
        let refused = config(&[]).setting(variable, "banana");
        let error = KafkaBroker::from_config(&refused)
            .await
            .expect_err("refused");
        assert_eq!(variable_of(&error), variable, "{error}");
    }
    // A consumer's is found when a consumer is made: on `subscribe`.
    let variable = "KAFKA_CONSUMER_CONFIG_SESSION_TIMEOUT_MS";
    let refused = config(&[("session.timeout.ms", "6000")]).setting(variable, "banana");
    let broker = KafkaBroker::from_config(&refused)
        .await
        .expect("the producer does not get the consumer's property");
    let error = broker
        .subscribe(Subscription {
            group: unique("scoped-refused"),
            topics: vec![unique("scoped-refused")],
            start: StartFrom::Earliest,
            prefetch: 16,
        })
        .await
        .err()
        .expect("refused");
    assert_eq!(variable_of(&error), variable, "{error}");
}
