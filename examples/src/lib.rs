//! An example service on `messaging`, modelled on what our first users run: users register
//! through an HTTP API (`#[event]` publishes `user.created`), orders are paid by a handler with
//! retries and a dead-letter queue, a consumer sends notifications by event name, mood entries
//! flow through an aggregate → vectorize → ingest pipeline (`publish_to`), the Guardian answers
//! advice requests from the API (request-reply, streamed as Server-Sent Events), and another
//! team's events are read in their own envelope.
//!
//! Run the quick start (no server needed): `cargo run -p messaging-examples --bin quickstart`
#![forbid(unsafe_code)]

pub mod analytics;
pub mod api;
pub mod domain;
pub mod guardian;
pub mod handlers;
pub mod mood;

use messaging_core::RuntimeBuilder;

/// Registers the state the handlers take (`State<T>`): the binaries and tests call this.
pub fn with_state(runtime: RuntimeBuilder) -> RuntimeBuilder {
    runtime
        .state(domain::PaymentGateway::default())
        .state(mood::MoodHistory::default())
        .state(mood::VectorStore::default())
}

/// Links the broker crates enabled as features, so that `MESSAGING_BACKEND` can select them
/// (a crate that nothing refers to is not linked, and its registration would be missing).
pub fn link_brokers() {
    #[cfg(feature = "celery")]
    use messaging_celery as _;
    #[cfg(feature = "kafka")]
    use messaging_kafka as _;
    #[cfg(feature = "rabbitmq")]
    use messaging_rabbit as _;
    #[cfg(feature = "redis")]
    use messaging_redis as _;
}
