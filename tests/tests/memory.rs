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

/// Lease renewal (issue 24) with each store; on the memory broker, since it is the store's.
mod lease {
    use super::connect;
    use messaging_tests::idempotency::idempotent_lease_is_renewed_while_the_handler_runs as renewed;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_lease_renewed_in_the_memory_store() {
        renewed(connect, messaging_tests::idempotency::memory_store).await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_lease_renewed_in_the_redis_store() {
        renewed(connect, messaging_tests::idempotency::redis_store).await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idempotent_lease_renewed_in_the_postgres_store() {
        renewed(connect, messaging_tests::idempotency::postgres_store).await;
    }
}
