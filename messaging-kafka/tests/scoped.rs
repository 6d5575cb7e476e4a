//! Client properties reach only the client they are meant for: with
//! `KAFKA_PRODUCER_CONFIG_LINGER_MS` and `KAFKA_CONSUMER_CONFIG_SESSION_TIMEOUT_MS` a message
//! makes the round trip and librdkafka warns about no property, where the same two as
//! `KAFKA_CONFIG_*` make the consumer warn about `linger.ms` and the producer about
//! `session.timeout.ms`.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test scoped

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BOOTSTRAP, eventually, unique};
use messaging_core::{Broker, Config, OutgoingMessage, StartFrom, Subscription};
use messaging_kafka::KafkaBroker;

/// Every line logged in this test binary (librdkafka logs from its own threads, so the
/// subscriber is the global one).
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines in which librdkafka says it ignores `property`.
    fn ignoring(&self, property: &str) -> Vec<String> {
        // librdkafka names `linger.ms` by the property it is an alias of.
        let name = match property {
            "linger.ms" => "queue.buffering.max.ms",
            other => other,
        };
        self.all()
            .into_iter()
            .filter(|l| (l.contains(property) || l.contains(name)) && l.contains("ignored"))
            .collect()
    }
}

fn config(variables: &[(&str, &str)]) -> Config {
    variables.iter().fold(
        Config::default()
            .setting("KAFKA_BOOTSTRAP_SERVERS", BOOTSTRAP)
            .setting("KAFKA_CONFIG_MESSAGING_TOPIC_REPLICATION_FACTOR", "1"),
        |config, (name, value)| config.setting(*name, *value),
    )
}

/// Connects as `config` says, subscribes a new group to a new topic, publishes one message
/// and waits for it: every kind of client has been made and used.
async fn round_trip(config: &Config) {
    let broker = KafkaBroker::from_config(config)
        .await
        .unwrap_or_else(|e| panic!("Kafka at {BOOTSTRAP} (run scripts/start-kafka.sh): {e}"));
    let topic = unique("scoped");
    let mut consumer = broker
        .subscribe(Subscription {
            group: unique("scoped"),
            topics: vec![topic.clone()],
            start: StartFrom::Earliest,
            prefetch: 16,
        })
        .await
        .expect("subscribed");
    broker
        .publish(OutgoingMessage::new(topic.as_str(), b"hello".to_vec()))
        .await
        .expect("published");
    let batch = tokio::time::timeout(Duration::from_secs(60), consumer.next_batch(16))
        .await
        .expect("a message within 60 s")
        .expect("fetched");
    assert_eq!(&batch[0].payload[..], b"hello");
    Box::new(consumer).close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_property_reaches_no_other_client() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();

    // Scoped first: the process's log limiter prints a message once, so the warnings the
    // second half expects must not have been printed before.
    round_trip(&config(&[
        ("KAFKA_PRODUCER_CONFIG_LINGER_MS", "5"),
        ("KAFKA_CONSUMER_CONFIG_SESSION_TIMEOUT_MS", "6000"),
    ]))
    .await;
    for property in ["linger.ms", "session.timeout.ms"] {
        let warned = lines.ignoring(property);
        assert!(
            warned.is_empty(),
            "{property} reached another client: {warned:#?}"
        );
    }

    // The same two for every client: each reaches the client that cannot use it, and
    // librdkafka says so; the check above would have seen it.
    round_trip(&config(&[
        ("KAFKA_CONFIG_LINGER_MS", "5"),
        ("KAFKA_CONFIG_SESSION_TIMEOUT_MS", "6000"),
    ]))
    .await;
    eventually(
        "librdkafka's warnings about misplaced properties",
        Duration::from_secs(10),
        || {
            !lines.ignoring("linger.ms").is_empty()
                && !lines.ignoring("session.timeout.ms").is_empty()
        },
    )
    .await;
    let consumer_warning = lines.ignoring("linger.ms");
    assert!(
        consumer_warning.iter().any(|l| l.contains("consumer")),
        "{consumer_warning:#?}"
    );
    let producer_warning = lines.ignoring("session.timeout.ms");
    assert!(
        producer_warning.iter().any(|l| l.contains("producer")),
        "{producer_warning:#?}"
    );
}
