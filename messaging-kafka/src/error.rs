//! This crate's own errors. They reach callers as the source of a
//! [`messaging_core::BrokerError`], next to librdkafka's [`rdkafka::error::KafkaError`].

use messaging_core::BrokerError;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// The name this backend is registered under.
pub(crate) const NAME: &str = "kafka";

/// A configuration or topic problem found by this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSetupError {
    /// Only one of the two Confluent Cloud credentials is set.
    #[error("KAFKA_API_KEY and KAFKA_API_SECRET go together; {missing} is not set")]
    HalfCredentials { missing: &'static str },
    /// A `messaging.*` option with a value it cannot take (the value is not secret).
    #[error("`{name}` cannot be `{value}`")]
    InvalidOption { name: String, value: String },
    /// A `messaging.*` option this crate does not know.
    #[error(
        "unknown option `{name}`; this crate reads messaging.topic.partitions, \
         messaging.topic.replication.factor, messaging.join.timeout.ms and \
         messaging.connect.timeout.ms"
    )]
    UnknownOption { name: String },
    /// The broker refused to create a topic.
    #[error(
        "could not create topic `{topic}`: {code}; create it beforehand, or allow this client to \
         create topics"
    )]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// The broker did not answer in time.
    #[error("no answer from {servers} within {timeout:?}")]
    Unreachable {
        servers: String,
        timeout: std::time::Duration,
    },
}

pub(crate) fn operation(
    operation: &'static str,
    source: impl Into<messaging_core::error::BoxError>,
) -> BrokerError {
    BrokerError::operation(NAME, operation, source)
}

pub(crate) fn connection(source: impl Into<messaging_core::error::BoxError>) -> BrokerError {
    BrokerError::connection(NAME, source)
}

/// Whether a librdkafka error means the broker cannot be reached (as opposed to a refusal).
pub(crate) fn is_transport(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::MessageTimedOut
        )
    )
}

/// A librdkafka failure of `operation`, classified as a lost connection or a refusal.
pub(crate) fn from_kafka(operation_name: &'static str, error: KafkaError) -> BrokerError {
    if is_transport(&error) {
        connection(error)
    } else {
        operation(operation_name, error)
    }
}
