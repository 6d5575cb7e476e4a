//! The Kafka backend of `messaging`, on `rdkafka` (bundled librdkafka).
//!
//! Linking this crate registers the broker under the name `kafka`, so
//! `MESSAGING_BACKEND=kafka KAFKA_BOOTSTRAP_SERVERS=host:9092` runs every handler unchanged.
//!
//! - **Publishing** is idempotent (`enable.idempotence=true`, `acks=all`); the key and every
//!   header travel as Kafka key and headers; `publish` resolves on the delivery report.
//! - **Consuming**: one consumer group per handler group. An offset is stored only when the
//!   runtime acknowledges (after the handler succeeded or the DLQ record was delivered), never
//!   past an earlier unsettled message of its partition, and committed every 5 s
//!   (`auto.commit.interval.ms`), on revocation and on close. Order is per partition.
//! - **Topics** (subscribed and dead-letter ones) are created when missing, with
//!   `messaging.topic.partitions` partitions (default 3) and `messaging.topic.replication.factor`
//!   (default -1, the broker's default).
//! - **Configuration**: `KAFKA_API_KEY`/`KAFKA_API_SECRET` switch to `SASL_SSL` + `PLAIN`
//!   (Confluent Cloud); any librdkafka property is passed with `KAFKA_CONFIG_<NAME>`
//!   (`KAFKA_CONFIG_SESSION_TIMEOUT_MS=6000` → `session.timeout.ms`), and so are this crate's
//!   `messaging.*` options (`KAFKA_CONFIG_MESSAGING_TOPIC_PARTITIONS=6`).
//!
//! ```no_run
//! # async fn f() -> Result<(), messaging_core::BrokerError> {
//! use messaging_kafka::KafkaBroker;
//! let broker = KafkaBroker::connect_with_properties("127.0.0.1:9092", [("session.timeout.ms", "6000")]).await?;
//! let runtime = messaging_core::Runtime::builder().broker(broker.into_dyn());
//! # Ok(()) }
//! ```

mod broker;
mod browse;
mod consumer;
mod convert;
mod error;
mod offsets;
pub mod settings;
mod topics;

use std::sync::Arc;

use messaging_core::{BoxFuture, Broker, BrokerError, BrokerFactory, Config};

pub use broker::KafkaBroker;
pub use error::KafkaSetupError;
pub use settings::KafkaSettings;

fn connect(config: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    Box::pin(async move { Ok(KafkaBroker::from_config(config).await?.into_dyn()) })
}

inventory::submit! {
    BrokerFactory { name: error::NAME, connect }
}
