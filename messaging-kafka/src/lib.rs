//! The Kafka backend of `messaging`, on `rdkafka` (bundled librdkafka, built from source with
//! the system's gcc, make and OpenSSL: Debian's librdkafka 2.0.2 is too old).
//!
//! Linking this crate registers the broker under the name `kafka`, so
//! `MESSAGING_BACKEND=kafka KAFKA_BOOTSTRAP_SERVERS=host:9092` runs every handler unchanged.
//!
//! - **Publishing** is idempotent (`enable.idempotence=true`, `acks=all`); the key and every
//!   header travel as Kafka key and headers. A record is handed to rdkafka's `BaseProducer`
//!   when `publish` is called, and `publish` resolves on its delivery report, served by a
//!   polling thread of the producer's own; while librdkafka's local queue is full
//!   (`queue.buffering.max.messages`) it waits for room, 100 ms at a time. A producer that
//!   librdkafka declares dead (a fatal error, e.g. `ProducerFenced` after the cluster was
//!   unreachable for longer than `message.timeout.ms`) is replaced by the next publish.
//! - **Consuming**: one consumer group per handler group; `subscribe` returns once the group
//!   has assigned the member its partitions, positioned at the committed offset, else at the
//!   beginning or (`StartFrom::Latest`) at the end as it was then. Each member's client is
//!   polled on a thread of its own, which hands records to the runtime over a channel and
//!   never waits for it: the member keeps polling while handlers are slow or in back-off
//!   (so `max.poll.interval.ms` never takes it out of its group), and the rebalance
//!   callbacks run there, never on a Tokio worker. An offset is stored only for acknowledged
//!   messages (after the handler succeeded or the DLQ record was delivered), never past an
//!   earlier unsettled message of its partition (acknowledgements come out of order: order
//!   is per key), and committed every second (`auto.commit.interval.ms`, librdkafka's
//!   default is 5 s), on revocation and on close. Each assigned partition has a queue of
//!   its own, read only while the partition holds fewer than twice the subscription's
//!   prefetch of delivered messages unsettled; one that stays full with its offset stuck for
//!   a second (a key blocked behind a slow or failing message) is paused, and resumed once
//!   half of that is settled; the others keep flowing. On a revocation the handlers first get up to 10 s (at most half of
//!   `max.poll.interval.ms`) to finish what they hold of the revoked partitions, so that it
//!   is committed; what is still unfinished then is read again by the new owner.
//!   The member is ready (`Consumer::readiness`, `/health/ready`) from an assignment until
//!   its partitions are revoked; it logs "consuming" then. While the client reports errors
//!   (the cluster is down or frozen) the member reports a `fetch` problem, cleared by the
//!   next record or by the cluster answering a metadata request (tried every 5 s).
//! - **Topics** (subscribed and dead-letter ones, and any published to) are created when the
//!   cluster's metadata lacks them.
//! - **DLQ** (`dlq list`, `dlq replay`): read by assignment, without joining a group, from
//!   the committed offsets of the group [`REPLAY_GROUP`] (else the beginning) to each
//!   partition's end. Settling a replay commits, for that group, the offset after the last
//!   record replayed in each partition, having first published again (and seen delivered)
//!   a copy of each record it passes over without replaying it, so that those stay listed.
//! - **Request-reply**: a service's replies arrive on its reply topic (`KAFKA_REPLY_TOPIC`,
//!   default `<MESSAGING_SOURCE>.replies` made a legal topic name), created if missing with
//!   an hour's retention, so that it does not grow. Every instance of the service reads
//!   all of it and core keeps the replies to its own requests (by correlation id); no topic
//!   is made per request. The inbox's consumer is assigned every partition at its end,
//!   found before `open_replies` returns (so no reply published after is missed), and
//!   neither joins a group nor commits ([`REPLY_INBOX_GROUP`] is only its `group.id`).
//!   A reply is keyed with its correlation id: a streamed reply's chunks share a partition
//!   and arrive in order.
//! - **Logs**: librdkafka's log lines and errors are rate-limited: each distinct message once
//!   when it starts, then one summary of the repeats every 30 s at most.
//! - **Configuration**: this crate reads its variables (every `KAFKA_*` one) from the
//!   framework's `Config::settings`, which `Config::from_env` fills from the environment;
//!   core reads none of them. `KAFKA_BOOTSTRAP_SERVERS` (default `localhost:9092`; set but
//!   empty is an error naming it); `KAFKA_API_KEY`/`KAFKA_API_SECRET` switch to `SASL_SSL` +
//!   `PLAIN` (Confluent Cloud); any librdkafka property is passed to every client with
//!   `KAFKA_CONFIG_<NAME>` (`KAFKA_CONFIG_SESSION_TIMEOUT_MS=6000` → `session.timeout.ms`),
//!   and so are this crate's options (see [`settings`]): `messaging.topic.partitions`
//!   (default 3), `messaging.topic.replication.factor` (default -1, the broker's default),
//!   `messaging.join.timeout.ms` (60 000) and `messaging.connect.timeout.ms` (10 000).
//!   A property meant for one kind of client goes to it alone with
//!   `KAFKA_PRODUCER_CONFIG_<NAME>`, `KAFKA_CONSUMER_CONFIG_<NAME>` (group members and the
//!   `dlq` reader) or `KAFKA_ADMIN_CONFIG_<NAME>` ([`Client`]), named the same way; it wins
//!   over `KAFKA_CONFIG_<NAME>` for that client. librdkafka warns about a property its client
//!   kind does not use (`linger.ms` on a consumer, `session.timeout.ms` on a producer): give
//!   those to their client. Secrets never appear in `Debug` output or logs. A property
//!   librdkafka refuses (unknown, or of the wrong type) fails `connect` (a consumer's: the
//!   `subscribe`) at once with `BrokerError::Config` naming the variable it came from
//!   (`KAFKA_CONFIG_SESSION_TIMEOUT_MS`, `KAFKA_CONSUMER_CONFIG_SESSION_TIMEOUT_MS`); an
//!   unreachable cluster stays retryable. The connection loop names the bootstrap servers.
//!
//! The tests run against Tansu, a Kafka-compatible broker started by `scripts/start-kafka.sh`
//! on 127.0.0.1:9092, with `session.timeout.ms=6000` (its first group join takes about half
//! the session timeout).
//!
//! ```no_run
//! # async fn f() -> Result<(), messaging_core::BrokerError> {
//! use messaging_kafka::KafkaBroker;
//! let broker = KafkaBroker::connect_with_properties("127.0.0.1:9092", [("session.timeout.ms", "6000")]).await?;
//! let runtime = messaging_core::Runtime::builder().broker(broker.into_dyn());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod broker;
mod browse;
mod consumer;
mod convert;
mod error;
mod lag;
mod offsets;
mod polling;
mod publish;
mod quiet;
mod received;
mod replies;
pub mod settings;
mod topics;

use std::sync::Arc;

use messaging_core::{BoxFuture, Broker, BrokerError, BrokerFactory, Config};

pub use broker::KafkaBroker;
pub use browse::REPLAY_GROUP;
pub use error::KafkaSetupError;
pub use replies::REPLY_INBOX_GROUP;
pub use settings::{Client, KafkaSettings};

fn connect(config: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    Box::pin(async move { Ok(KafkaBroker::from_config(config).await?.into_dyn()) })
}

/// The settings a connection would refuse before asking the cluster (librdkafka's own
/// checks of property values happen when a client is made, so only by connecting).
fn check(config: &Config) -> Result<(), BrokerError> {
    KafkaSettings::from_config(config)
        .map(drop)
        .map_err(KafkaSetupError::into_broker_error)
}

inventory::submit! {
    BrokerFactory::new(error::NAME, connect)
        .variables(&["KAFKA_"])
        .target(settings::target)
        .check(check)
        .bindings(settings::asyncapi_bindings)
}
