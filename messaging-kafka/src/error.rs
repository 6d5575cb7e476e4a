//! This crate's own errors. They reach callers as the source of a
//! [`messaging_core::BrokerError`], next to librdkafka's [`rdkafka::error::KafkaError`].

use messaging_core::BrokerError;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::settings::{Client, KafkaSettings, is_secret, variable_name, variable_of};

/// The name this backend is registered under.
pub(crate) const NAME: &str = "kafka";

/// A configuration or topic problem found by this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSetupError {
    /// A variable is set but empty: a mistake rather than a request for the default.
    #[error("is set but empty; unset it for the default or give an address")]
    Empty {
        /// The variable.
        variable: &'static str,
    },
    /// A `messaging.*` option in a variable of one client: it applies to the whole broker.
    #[error(
        "`{name}` applies to every client of the broker, not to the {client:?} alone; set it \
         with KAFKA_CONFIG_*"
    )]
    NotPerClient {
        /// The option.
        name: String,
        /// The client whose variable named it.
        client: Client,
    },
    /// Only one of the two Confluent Cloud credentials is set.
    #[error("KAFKA_API_KEY and KAFKA_API_SECRET go together; {missing} is not set")]
    HalfCredentials {
        /// The variable that is not set.
        missing: &'static str,
    },
    /// A `messaging.*` option with a value it cannot take (the value is not secret).
    #[error("`{name}` cannot be `{value}`")]
    InvalidOption {
        /// The option.
        name: String,
        /// The value given.
        value: String,
    },
    /// A `messaging.*` option this crate does not know.
    #[error(
        "unknown option `{name}`; this crate reads messaging.topic.partitions, \
         messaging.topic.replication.factor, messaging.join.timeout.ms and \
         messaging.connect.timeout.ms"
    )]
    UnknownOption {
        /// The option given.
        name: String,
    },
    /// `KAFKA_REPLY_TOPIC` is not a name Kafka takes for a topic (the value is not secret).
    #[error("`{value}` is not a Kafka topic name: {reason}")]
    InvalidReplyTopic {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The broker refused to create a topic.
    #[error(
        "could not create topic `{topic}`: {code}; create it beforehand, or allow this client to \
         create topics"
    )]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The broker did not answer in time.
    #[error("no answer from {servers} within {timeout:?}")]
    Unreachable {
        /// The bootstrap servers asked.
        servers: String,
        /// How long it waited.
        timeout: std::time::Duration,
    },
}

impl KafkaSetupError {
    /// As the framework's error: a setting that can never work is a configuration error
    /// naming the variable to fix, which ends the connection loop.
    pub(crate) fn into_broker_error(self) -> BrokerError {
        match &self {
            Self::InvalidOption { name, .. } | Self::UnknownOption { name } => {
                BrokerError::config(NAME, variable_of(name), &self)
            }
            Self::HalfCredentials { missing } => BrokerError::config(NAME, *missing, &self),
            Self::Empty { variable } => BrokerError::config(NAME, *variable, &self),
            Self::InvalidReplyTopic { .. } => {
                BrokerError::config(NAME, crate::settings::REPLY_TOPIC_VARIABLE, &self)
            }
            Self::NotPerClient { name, client } => {
                BrokerError::config(NAME, variable_name(client.variable_prefix(), name), &self)
            }
            Self::CreateTopic { .. } | Self::Unreachable { .. } => operation("configure", self),
        }
    }
}

/// A client librdkafka would not create. A property it refuses (unknown, or a value of the
/// wrong type) or names in its complaint can never work: a configuration error naming the
/// variable it came from (`client`'s own, if it has one). Anything else is an ordinary
/// failure of `operation_name`.
pub(crate) fn creation_error(
    operation_name: &'static str,
    error: KafkaError,
    settings: &KafkaSettings,
    client: Client,
) -> BrokerError {
    match &error {
        KafkaError::ClientConfig(_, description, key, value) => {
            let value = if is_secret(key) { "***" } else { value };
            BrokerError::config(
                NAME,
                settings.variable_of(client, key),
                format!("librdkafka refuses `{key}` = `{value}`: {description}"),
            )
        }
        KafkaError::ClientCreation(message) => {
            // librdkafka names the properties in conflict, as in "`a` must be >= `b`".
            match settings
                .property_names(client)
                .find(|name| message.contains(*name))
            {
                Some(name) => BrokerError::config(
                    NAME,
                    settings.variable_of(client, name),
                    format!("librdkafka refuses the configuration: {message}"),
                ),
                None => operation(operation_name, error),
            }
        }
        _ => operation(operation_name, error),
    }
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
