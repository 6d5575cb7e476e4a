//! The conformance suite on RabbitMQ (127.0.0.1:5672, guest/guest; `scripts/start-rabbitmq.sh`
//! starts it). Fails, never skips, when RabbitMQ cannot be reached.
//!
//! Run with: cargo test -p messaging-tests --features rabbitmq --test rabbit

use std::time::Duration;

use messaging_rabbit::{RabbitBroker, RabbitOptions};
use messaging_tests::ConnectFuture;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn connect() -> ConnectFuture {
    Box::pin(async {
        let options = RabbitOptions::new(URL)
            .connection_name("messaging-tests conformance")
            // Every run declares fresh queues; let RabbitMQ drop them once unused.
            .queue_expires(Duration::from_secs(300));
        match RabbitBroker::connect(options).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => panic!(
                "RabbitMQ is not reachable at {URL} (run scripts/start-rabbitmq.sh): {error}"
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
