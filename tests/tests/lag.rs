//! Consumer lag (issue 26, done-when 1) on the memory broker, Kafka (Tansu on
//! 127.0.0.1:9092), RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379): a backlog of
//! 5 000 messages reads 5 000 (±1 %) through `Broker::lag`, `consumer lag --json` and
//! `/metrics`, and drains to 0 once the handler resumes. Fails, never skips, when a broker
//! is missing (`scripts/start-*.sh` start them).
//!
//! Run with: cargo test -p messaging-tests --all-features --test lag

use std::sync::Arc;
use std::time::Duration;

use messaging_core::{Broker, MemoryBroker};
use messaging_kafka::KafkaBroker;
use messaging_rabbit::{RabbitBroker, RabbitOptions};
use messaging_redis::RedisBroker;
use messaging_tests::ConnectFuture;
use messaging_tests::lag::{LagCommand, lag_reads_the_backlog_and_drains};

/// A `consumer` binary with every broker linked, whose handler reads `RELIABILITY_TOPIC`.
const CONSUMER: &str = env!("CARGO_BIN_EXE_reliability_consumer");

const KAFKA: &str = "127.0.0.1:9092";
const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379/0";

fn memory() -> ConnectFuture {
    Box::pin(async { Arc::new(MemoryBroker::shared()) as Arc<dyn Broker> })
}

fn kafka() -> ConnectFuture {
    Box::pin(async {
        // A first group join takes about half of `session.timeout.ms` on the test broker.
        let properties = [
            ("session.timeout.ms", "6000"),
            ("messaging.topic.replication.factor", "1"),
        ];
        match KafkaBroker::connect_with_properties(KAFKA, properties).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => {
                panic!("Kafka is not reachable at {KAFKA} (run scripts/start-kafka.sh): {error}")
            }
        }
    })
}

fn rabbit() -> ConnectFuture {
    Box::pin(async {
        let options = RabbitOptions::new(RABBITMQ)
            .connection_name("messaging-tests lag")
            .queue_expires(Duration::from_secs(300));
        match RabbitBroker::connect(options).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => panic!(
                "RabbitMQ is not reachable at {RABBITMQ} (run scripts/start-rabbitmq.sh): {error}"
            ),
        }
    })
}

fn redis() -> ConnectFuture {
    Box::pin(async {
        match RedisBroker::connect_url(REDIS).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => {
                panic!("Redis is not reachable at {REDIS} (run scripts/start-redis.sh): {error}")
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lag_reads_the_backlog_and_drains() {
    lag_reads_the_backlog_and_drains(memory, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_lag_reads_the_backlog_and_drains() {
    let env = &[
        ("MESSAGING_BACKEND", "kafka"),
        ("KAFKA_BOOTSTRAP_SERVERS", KAFKA),
    ];
    let command = LagCommand {
        binary: CONSUMER,
        env,
    };
    lag_reads_the_backlog_and_drains(kafka, Some(command)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_lag_reads_the_backlog_and_drains() {
    let env = &[
        ("MESSAGING_BACKEND", "rabbitmq"),
        ("RABBITMQ_URL", RABBITMQ),
    ];
    let command = LagCommand {
        binary: CONSUMER,
        env,
    };
    lag_reads_the_backlog_and_drains(rabbit, Some(command)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lag_reads_the_backlog_and_drains() {
    let env = &[("MESSAGING_BACKEND", "redis"), ("REDIS_URL", REDIS)];
    let command = LagCommand {
        binary: CONSUMER,
        env,
    };
    lag_reads_the_backlog_and_drains(redis, Some(command)).await;
}

/// Redis answers `lag` with nil when entries were deleted after the group's last delivered
/// one: the entries are then counted.
#[tokio::test]
async fn redis_lag_is_counted_when_redis_cannot_tell_it() {
    let broker = RedisBroker::connect_url(REDIS)
        .await
        .unwrap_or_else(|e| panic!("Redis is not reachable at {REDIS}: {e}"));
    let mut conn = broker.connection();
    let stream = format!("lag-nil-{}", uuid::Uuid::now_v7().simple());
    for seq in 1..=5 {
        redis::cmd("XADD")
            .arg(&stream)
            .arg(format!("1-{seq}"))
            .arg("payload")
            .arg("x")
            .query_async::<String>(&mut conn)
            .await
            .unwrap();
    }
    redis::cmd("XDEL")
        .arg(&stream)
        .arg("1-4")
        .query_async::<u64>(&mut conn)
        .await
        .unwrap();
    for (group, at) in [("middle", "1-2"), ("start", "0")] {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(group)
            .arg(at)
            .query_async::<String>(&mut conn)
            .await
            .unwrap();
    }
    let topics = [stream.clone()];
    let middle = broker.lag("middle", &topics).await.unwrap();
    let start = broker.lag("start", &topics).await.unwrap();
    let missing = broker.lag("never-created", &topics).await.unwrap();
    let nothing = broker
        .lag("middle", &[format!("{stream}-absent")])
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg(&stream)
        .query_async::<u64>(&mut conn)
        .await
        .unwrap();
    // 1-3 and 1-5 after 1-2; all four left from the start.
    assert_eq!((middle[0].lag, middle[0].pending), (2, Some(0)));
    assert_eq!(start[0].lag, 4);
    assert!(missing.is_empty() && nothing.is_empty());
}
