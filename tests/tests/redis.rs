//! The conformance suite on Redis Streams (127.0.0.1:6379; `scripts/start-redis.sh` starts it).
//! Fails, never skips, when Redis cannot be reached.
//!
//! Run with: cargo test -p messaging-tests --features redis --test redis

use messaging_redis::RedisBroker;
use messaging_tests::ConnectFuture;

const URL: &str = "redis://127.0.0.1:6379/0";

fn connect() -> ConnectFuture {
    Box::pin(async {
        match RedisBroker::connect_url(URL).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => {
                panic!("Redis is not reachable at {URL} (run scripts/start-redis.sh): {error}")
            }
        }
    })
}

messaging_tests::suite!(connect);

// Idempotent handlers with each store (issue 24, done-when 4); the PostgreSQL store with its
// feature (`--all-features` runs every one).
messaging_tests::idempotency_suite!(connect,
    memory_store => messaging_tests::idempotency::memory_store,
    redis_store => messaging_tests::idempotency::redis_store,
);
#[cfg(feature = "postgres")]
messaging_tests::idempotency_suite!(connect, postgres_store => messaging_tests::idempotency::postgres_store);
