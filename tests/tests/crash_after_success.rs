//! A consumer SIGKILLed after its handler succeeded (issue 24), as separate processes of the
//! binary `crash_consumer`:
//!
//! - Done-when 4: killed between the success of an idempotent handler (the key marked done)
//!   and the acknowledgement, on Kafka, RabbitMQ and Redis, with the keys in Redis and in
//!   PostgreSQL. The consumer started again gets the redelivery and does not run the handler
//!   again: the runs file keeps one line, its `messaging_duplicates_total` shows 1, and the
//!   group has nothing left unacknowledged. The memory store is not tried: its keys die with
//!   the process, so a redelivery after a crash runs the handler again.
//! - Done-when 3: killed between the success of a `publish_to` handler and the publish, on
//!   Redis and RabbitMQ. The publish fails for as long as the first process lives (on Redis
//!   the destination stream's key holds a string, so `XADD` fails with `WRONGTYPE`; on
//!   RabbitMQ no queue is bound to the destination, so the mandatory publish comes back
//!   unroutable) and the handler is retried meanwhile; the test kills it, repairs the
//!   destination, and the consumer started again publishes the result exactly once and
//!   acknowledges the source message.
//!
//! Fails, never skips, when a broker or PostgreSQL is missing.
//!
//! Run with: cargo test -p messaging-tests --all-features --test crash_after_success

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messaging_core::message::header;
use messaging_core::{Broker, Event, OutgoingMessage, StartFrom, Subscription};
use messaging_kafka::KafkaBroker;
use messaging_rabbit::RabbitBroker;
use messaging_redis::RedisBroker;
use messaging_tests::crash::{ConsumerProcess, PATIENCE, duplicates, lines};

const BINARY: &str = env!("CARGO_BIN_EXE_crash_consumer");
const KAFKA: &str = "127.0.0.1:9092";
const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379/0";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A broker under test: a client of the test's own and what the consumer process is given.
enum Under {
    Kafka(KafkaBroker),
    Rabbit(RabbitBroker),
    Redis(RedisBroker),
}

impl Under {
    async fn kafka() -> Self {
        let properties = [
            ("session.timeout.ms", "6000"),
            ("messaging.topic.replication.factor", "1"),
        ];
        match KafkaBroker::connect_with_properties(KAFKA, properties).await {
            Ok(broker) => Self::Kafka(broker),
            Err(e) => panic!("Kafka is not reachable at {KAFKA} (run scripts/start-kafka.sh): {e}"),
        }
    }

    async fn rabbit() -> Self {
        match RabbitBroker::connect_url(RABBIT).await {
            Ok(broker) => Self::Rabbit(broker),
            Err(e) => {
                panic!("RabbitMQ is not reachable at {RABBIT} (run scripts/start-rabbitmq.sh): {e}")
            }
        }
    }

    async fn redis() -> Self {
        match RedisBroker::connect_url(REDIS).await {
            Ok(broker) => Self::Redis(broker),
            Err(e) => panic!("Redis is not reachable at {REDIS} (run scripts/start-redis.sh): {e}"),
        }
    }

    fn client(&self) -> Arc<dyn Broker> {
        match self {
            Self::Kafka(b) => b.clone().into_dyn(),
            Self::Rabbit(b) => b.clone().into_dyn(),
            Self::Redis(b) => b.clone().into_dyn(),
        }
    }

    /// The consumer's settings for this broker.
    fn env(&self) -> Vec<(String, String)> {
        let pairs: &[(&str, &str)] = match self {
            // librdkafka's 45 s session timeout would also keep a killed member's partitions
            // from the next one for 45 s.
            Self::Kafka(_) => &[
                ("MESSAGING_BACKEND", "kafka"),
                ("KAFKA_BOOTSTRAP_SERVERS", KAFKA),
                ("KAFKA_CONFIG_SESSION_TIMEOUT_MS", "6000"),
                ("KAFKA_CONFIG_MESSAGING_TOPIC_REPLICATION_FACTOR", "1"),
            ],
            Self::Rabbit(_) => &[("MESSAGING_BACKEND", "rabbitmq"), ("RABBITMQ_URL", RABBIT)],
            // A dead consumer's pending entries are reclaimed after 2 s instead of 30 s.
            Self::Redis(_) => &[
                ("MESSAGING_BACKEND", "redis"),
                ("REDIS_URL", "redis://127.0.0.1:6379/0?reclaim_idle=2s"),
            ],
        };
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Makes `topics` exist before the consumer subscribes (Kafka; the others create what a
    /// subscription needs).
    async fn declare(&self, topics: &[String]) {
        if let Self::Kafka(broker) = self {
            broker
                .declare_topics(topics)
                .await
                .expect("the topics are created");
        }
    }

    /// How many messages of `topic` `group` has not acknowledged (delivered or not), once
    /// no member of the group runs. Kafka: the high watermarks less the committed offsets;
    /// RabbitMQ: what the group's queue holds (the queue is deleted); Redis: the group's
    /// pending entries and lag.
    async fn unsettled(&self, topic: &str, group: &str) -> u64 {
        match self {
            Self::Kafka(_) => {
                let (topic, group) = (topic.to_owned(), group.to_owned());
                tokio::task::spawn_blocking(move || kafka_unsettled(&topic, &group))
                    .await
                    .unwrap()
            }
            Self::Rabbit(broker) => {
                let queue = broker.group_queue(group).unwrap();
                u64::from(
                    broker
                        .delete_queue(&queue)
                        .await
                        .expect("the group's queue"),
                )
            }
            Self::Redis(broker) => {
                let mut conn = broker.connection();
                let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(topic)
                    .query_async(&mut conn)
                    .await
                    .expect("XINFO GROUPS");
                let number = |info: &HashMap<String, redis::Value>, field: &str| {
                    info.get(field)
                        .and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok())
                        .unwrap_or(0)
                };
                let info = groups
                    .iter()
                    .find(|g| {
                        g.get("name")
                            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                            .as_deref()
                            == Some(group)
                    })
                    .unwrap_or_else(|| panic!("no group {group} on {topic}"));
                number(info, "pending") + number(info, "lag")
            }
        }
    }

    /// Removes what a run left (Redis streams; RabbitMQ queues go in `unsettled`; Tansu keeps
    /// topics in memory).
    async fn clean(&self, topics: &[String]) {
        if let Self::Redis(broker) = self {
            let mut conn = broker.connection();
            let _: Result<u64, _> = redis::cmd("DEL").arg(topics).query_async(&mut conn).await;
        }
    }
}

fn kafka_unsettled(topic: &str, group: &str) -> u64 {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    const TIMEOUT: Duration = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka client");
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("the topic's metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, TIMEOUT)
        .expect("the group's committed offsets");
    partitions
        .iter()
        .map(|&p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .expect("the partition's watermarks");
            let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at,
                _ => low,
            };
            u64::try_from(high - at).unwrap_or(0)
        })
        .sum()
}

/// Where the idempotency keys are kept.
#[derive(Clone, Copy)]
enum Store {
    Redis,
    Postgres,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }

    fn url(self) -> &'static str {
        match self {
            Self::Redis => REDIS,
            Self::Postgres => POSTGRES,
        }
    }
}

/// One test's names and files.
struct Run {
    tag: String,
    dir: PathBuf,
}

impl Run {
    fn new(test: &str) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let tag = format!("crash-{test}-{}", &id[id.len() - 10..]);
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).unwrap();
        println!(
            "{test}: topics {tag}.*, group {tag}, files in {}",
            dir.display()
        );
        Self { tag, dir }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.tag)
    }

    fn runs(&self) -> PathBuf {
        self.dir.join("runs.log")
    }

    /// The consumer's environment: the broker's, the run's topics and runs file, keys
    /// remembered for ten minutes.
    fn env(&self, under: &Under, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = under.env();
        for (name, topic) in [
            ("ORDERS", "orders"),
            ("MOODS", "moods"),
            ("CONTEXT", "context"),
        ] {
            env.push((format!("MESSAGING_TOPIC_CRASH_{name}"), self.topic(topic)));
        }
        env.push(("CRASH_LOG".into(), self.runs().display().to_string()));
        env.push(("MESSAGING_IDEMPOTENCY_TTL".into(), "10m".into()));
        env.push(("MESSAGING_CONNECT_RETRY_DELAY".into(), "200ms".into()));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }

    fn start(&self, under: &Under, name: &str, extra: &[(&str, &str)]) -> ConsumerProcess {
        let args = [
            "--group",
            &self.tag,
            "--from-beginning",
            "--shutdown-timeout",
            "5s",
        ];
        ConsumerProcess::start(BINARY, &args, &self.env(under, extra), &self.dir, name)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failed run keeps its files (runs, consumer output) for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Done-when 4: an idempotent handler's consumer killed after the key was marked done and
/// before the acknowledgement; the next one gets the redelivery as a duplicate.
async fn redelivered_after_a_kill_between_success_and_ack(under: Under, store: Store) {
    let run = Run::new(&format!("idem-{}", store.name()));
    let (orders, group) = (run.topic("orders"), run.tag.clone());
    under.declare(&[orders.clone(), run.topic("moods")]).await;
    let url = store.url();
    let mut first = run.start(
        &under,
        "first",
        &[
            ("MESSAGING_IDEMPOTENCY_STORE", "stall-after-complete"),
            ("CRASH_INNER_STORE", store.name()),
            ("MESSAGING_IDEMPOTENCY_URL", url),
        ],
    );
    first
        .until("the group consuming", ConsumerProcess::ready)
        .await;
    under
        .client()
        .publish(
            OutgoingMessage::new(&orders, &br#"{"order":1}"#[..])
                .with_key("1")
                .with_header(header::IDEMPOTENCY_KEY, "order-1"),
        )
        .await
        .expect("the order is published");
    first
        .until("the key marked done", |p| {
            p.output().contains("stalled after marking")
        })
        .await;
    assert_eq!(lines(&run.runs()), [r#"charge {"order":1}"#]);
    first.kill();

    let mut second = run.start(
        &under,
        "second",
        &[
            ("MESSAGING_IDEMPOTENCY_STORE", store.name()),
            ("MESSAGING_IDEMPOTENCY_URL", url),
        ],
    );
    second
        .until("the redelivery counted as a duplicate (or run)", |p| {
            duplicates(&p.metrics(), &orders, &group) == 1 || lines(&run.runs()).len() > 1
        })
        .await;
    assert_eq!(
        lines(&run.runs()).len(),
        1,
        "the handler ran again after the crash"
    );
    let status = second.terminate();
    assert!(status.success(), "the second consumer exited with {status}");
    assert_eq!(
        under.unsettled(&orders, &group).await,
        0,
        "the redelivery was acknowledged"
    );
    assert_eq!(lines(&run.runs()).len(), 1);
    under.clean(&[orders, run.topic("moods")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_redis_store_redelivery_after_a_kill_runs_once() {
    redelivered_after_a_kill_between_success_and_ack(Under::kafka().await, Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_postgres_store_redelivery_after_a_kill_runs_once() {
    redelivered_after_a_kill_between_success_and_ack(Under::kafka().await, Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_redis_store_redelivery_after_a_kill_runs_once() {
    redelivered_after_a_kill_between_success_and_ack(Under::rabbit().await, Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_postgres_store_redelivery_after_a_kill_runs_once() {
    redelivered_after_a_kill_between_success_and_ack(Under::rabbit().await, Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_redis_store_redelivery_after_a_kill_runs_once() {
    redelivered_after_a_kill_between_success_and_ack(Under::redis().await, Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_postgres_store_redelivery_after_a_kill_runs_once() {
    redelivered_after_a_kill_between_success_and_ack(Under::redis().await, Store::Postgres).await;
}

/// Done-when 3: a `publish_to` handler's consumer killed while its result could not be
/// published; the next one publishes it once the destination takes it.
async fn published_after_a_kill_between_success_and_publish(under: Under) {
    let run = Run::new("publish-to");
    let (moods, context, group) = (run.topic("moods"), run.topic("context"), run.tag.clone());
    let reader_group = format!("{}-reader", run.tag);
    if let Under::Redis(broker) = &under {
        // A string where the destination stream would go: `XADD` fails with WRONGTYPE.
        let mut conn = broker.connection();
        let _: () = redis::cmd("SET")
            .arg(&context)
            .arg("not a stream")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // RabbitMQ: no queue is bound to the destination yet, so its publish is unroutable.
    let mut first = run.start(&under, "first", &[]);
    first
        .until("the group consuming", ConsumerProcess::ready)
        .await;
    under
        .client()
        .publish(OutgoingMessage::new(&moods, &br#"{"user":"u-7"}"#[..]).with_key("u-7"))
        .await
        .expect("the mood is published");
    // The handler succeeded, its publish failed, and the retry did the same.
    let refusal = match under {
        Under::Redis(_) => "WRONGTYPE",
        _ => "no queue is bound to it",
    };
    first
        .until("two attempts whose publish failed", |p| {
            lines(&run.runs()).len() >= 2 && p.output().contains(refusal)
        })
        .await;
    first.kill();
    let attempts = lines(&run.runs());
    assert!(
        attempts.iter().all(|l| l == "aggregate u-7"),
        "{attempts:?}"
    );

    // Repaired: the key goes (Redis), a group of the next step reads the destination (its
    // queue is bound on RabbitMQ from this subscription on).
    under.clean(std::slice::from_ref(&context)).await;
    let client = under.client();
    let mut reader = client
        .subscribe(Subscription {
            group: reader_group.clone(),
            topics: vec![context.clone()],
            start: StartFrom::Earliest,
            prefetch: 10,
        })
        .await
        .expect("the reader subscribes");
    let mut second = run.start(&under, "second", &[]);
    let deadline = Instant::now() + PATIENCE;
    let results = loop {
        second.assert_running("while the result was awaited");
        assert!(
            Instant::now() < deadline,
            "no result on {context} after {PATIENCE:?}"
        );
        if let Ok(batch) =
            tokio::time::timeout(Duration::from_millis(200), reader.next_batch(10)).await
        {
            let batch = batch.expect("the reader reads");
            if !batch.is_empty() {
                break batch;
            }
        }
    };
    assert_eq!(results.len(), 1, "one result");
    let result = &results[0];
    assert_eq!(result.key_str(), Some("u-7"), "the source's key goes on");
    let event: Event<serde_json::Value> = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!(
        event.name, "crash.context",
        "named after the declared topic"
    );
    assert_eq!(event.data, serde_json::json!({"user": "u-7", "entries": 1}));
    let status = second.terminate();
    assert!(status.success(), "the second consumer exited with {status}");
    let attempts = lines(&run.runs()).len();
    reader.acker().ack(result).await.unwrap();
    reader.close().await.unwrap();
    assert_eq!(
        under.unsettled(&context, &reader_group).await,
        0,
        "a second result was published"
    );
    assert_eq!(
        under.unsettled(&moods, &group).await,
        0,
        "the source message was acknowledged"
    );
    assert!(attempts >= 3, "the second consumer ran the handler");
    under.clean(&[moods, context, run.topic("orders")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_publish_to_result_is_published_after_a_kill() {
    published_after_a_kill_between_success_and_publish(Under::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_publish_to_result_is_published_after_a_kill() {
    published_after_a_kill_between_success_and_publish(Under::rabbit().await).await;
}
