//! Helpers of the Kafka integration tests: a connection to the test broker (Tansu on
//! 127.0.0.1:9092, started by `scripts/start-kafka.sh`), fresh names, waiting.

#![allow(dead_code)] // each test file uses a different part

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging_core::{Config, HandlerSpec, Runtime};
use messaging_kafka::KafkaBroker;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const BOOTSTRAP: &str = "127.0.0.1:9092";

/// A new client of the test broker with `partitions` per created topic; panics (the test
/// fails, it never skips) when the broker does not answer.
pub async fn connect(partitions: u32) -> KafkaBroker {
    let partitions = partitions.to_string();
    let properties = [
        // The test broker's first group join takes about half of the session timeout.
        ("session.timeout.ms", "6000"),
        // Commit stored offsets often, so tests can observe them.
        ("auto.commit.interval.ms", "200"),
        ("messaging.topic.replication.factor", "1"),
        ("messaging.topic.partitions", partitions.as_str()),
    ];
    match KafkaBroker::connect_with_properties(BOOTSTRAP, properties).await {
        Ok(broker) => broker,
        Err(error) => {
            panic!("Kafka is not reachable at {BOOTSTRAP} (run scripts/start-kafka.sh): {error}")
        }
    }
}

/// A new client of the test broker configured as the service `source` would be from its
/// environment (`MESSAGING_SOURCE`, `KAFKA_*`), with `partitions` per created topic and
/// `variables` on top; panics when the broker does not answer.
pub async fn connect_as(source: &str, partitions: u32, variables: &[(&str, &str)]) -> KafkaBroker {
    let config = variables.iter().fold(
        Config::default()
            .with_source(source)
            .setting("KAFKA_BOOTSTRAP_SERVERS", BOOTSTRAP)
            .setting("KAFKA_CONFIG_MESSAGING_TOPIC_REPLICATION_FACTOR", "1")
            .setting(
                "KAFKA_CONFIG_MESSAGING_TOPIC_PARTITIONS",
                partitions.to_string(),
            ),
        |config, (name, value)| config.setting(*name, *value),
    );
    match KafkaBroker::from_config(&config).await {
        Ok(broker) => broker,
        Err(error) => {
            panic!("Kafka is not reachable at {BOOTSTRAP} (run scripts/start-kafka.sh): {error}")
        }
    }
}

/// A name no other run uses.
pub fn unique(what: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("kt-{}-{what}", &id[id.len() - 12..])
}

/// Starts a runtime on `broker` with only `handlers`, reading new topics from the beginning.
pub async fn start(
    broker: &KafkaBroker,
    handlers: Vec<HandlerSpec>,
    concurrency: usize,
) -> Runtime {
    start_with(broker, handlers, concurrency, Duration::from_secs(10)).await
}

/// [`start`] with a shutdown timeout.
pub async fn start_with(
    broker: &KafkaBroker,
    handlers: Vec<HandlerSpec>,
    concurrency: usize,
    shutdown_timeout: Duration,
) -> Runtime {
    let mut builder = Runtime::builder()
        .broker(broker.clone().into_dyn())
        .config(Config::default().with_source("kafka-tests"))
        .without_registered()
        .install_global_producer(false)
        .from_beginning(true)
        .concurrency(concurrency)
        .shutdown_timeout(shutdown_timeout);
    for h in handlers {
        builder = builder.handler(h);
    }
    builder.start().await.expect("runtime starts")
}

/// Waits until `done` holds, panicking with `what` after `patience`.
pub async fn eventually(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A producer on `broker`.
pub fn producer(broker: &KafkaBroker) -> messaging_core::Producer {
    messaging_core::Producer::new(
        broker.clone().into_dyn(),
        Config::default().with_source("kafka-tests"),
    )
}

/// [`eventually`] with an asynchronous check, made every 100 ms.
pub async fn eventually_async<F, Fut>(what: &str, patience: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A shared list that handlers append to.
#[derive(Debug)]
pub struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Log<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Clone> Log<T> {
    pub fn push(&self, value: T) {
        self.0.lock().unwrap().push(value);
    }
    pub fn all(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// The offsets `group` has committed on `topic`'s partitions `0..partitions` (`None` where
/// nothing is committed), read without joining the group.
pub async fn committed(group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BOOTSTRAP)
            .set("group.id", &group)
            .create()
            .expect("consumer for reading commits");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_range(&topic, 0, partitions - 1);
        let found = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(
                |p| match found.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect()
    })
    .await
    .unwrap()
}
