//! The conformance suite on Kafka (127.0.0.1:9092; `scripts/start-kafka.sh` starts Tansu there).
//! Fails, never skips, when the broker cannot be reached.
//!
//! Run with: cargo test -p messaging-tests --features kafka --test kafka

use messaging_kafka::KafkaBroker;
use messaging_tests::ConnectFuture;

const BOOTSTRAP: &str = "127.0.0.1:9092";

fn connect() -> ConnectFuture {
    Box::pin(async {
        // The test broker's first group join takes about half of `session.timeout.ms`;
        // librdkafka's 45 s default would make every test wait 20 s.
        let properties = [
            ("session.timeout.ms", "6000"),
            ("messaging.topic.replication.factor", "1"),
        ];
        match KafkaBroker::connect_with_properties(BOOTSTRAP, properties).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => panic!(
                "Kafka is not reachable at {BOOTSTRAP} (run scripts/start-kafka.sh): {error}"
            ),
        }
    })
}

messaging_tests::suite!(connect);

// Idempotent handlers with each store (issue 24, done-when 4); the Redis and PostgreSQL
// stores with their features (`--all-features` runs every one).
messaging_tests::idempotency_suite!(connect, memory_store => messaging_tests::idempotency::memory_store);
#[cfg(feature = "redis")]
messaging_tests::idempotency_suite!(connect, redis_store => messaging_tests::idempotency::redis_store);
#[cfg(feature = "postgres")]
messaging_tests::idempotency_suite!(connect, postgres_store => messaging_tests::idempotency::postgres_store);
