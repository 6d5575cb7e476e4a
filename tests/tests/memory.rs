//! The conformance suite on the in-memory broker.

use std::sync::Arc;

use messaging_core::MemoryBroker;
use messaging_tests::ConnectFuture;

// One broker per process, like one server: every "connection" reaches the same topics.
fn connect() -> ConnectFuture {
    Box::pin(async { Arc::new(MemoryBroker::shared()) as Arc<dyn messaging_core::Broker> })
}

messaging_tests::suite!(connect);

// Idempotent handlers with each store (issue 24, done-when 4); the Redis and PostgreSQL
// stores with their features (`--all-features` runs every one).
messaging_tests::idempotency_suite!(connect, memory_store => messaging_tests::idempotency::memory_store);
#[cfg(feature = "redis")]
messaging_tests::idempotency_suite!(connect, redis_store => messaging_tests::idempotency::redis_store);
#[cfg(feature = "postgres")]
messaging_tests::idempotency_suite!(connect, postgres_store => messaging_tests::idempotency::postgres_store);
