//! What this backend reports, and how it maps onto the core's [`BrokerError`].

use std::time::Duration;

use messaging_core::BrokerError;

use crate::NAME;
use crate::options::URL_VARIABLE;

/// A failure of the RabbitMQ backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitError {
    /// A topic that cannot be bound literally on a topic exchange.
    #[error("invalid topic `{topic}`: {reason}")]
    InvalidTopic {
        /// The topic.
        topic: String,
        /// Why it cannot be bound.
        reason: &'static str,
    },
    /// An exchange, queue or header name AMQP cannot carry.
    #[error("invalid {what} `{name}`: {reason}")]
    InvalidName {
        /// `exchange`, `queue` or `header`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why AMQP cannot carry it.
        reason: &'static str,
    },
    /// The broker negatively acknowledged a publish: it may not be stored.
    #[error("the broker did not accept the message (publisher confirm nack)")]
    Nacked,
    /// A publish no queue is bound to: the broker returned it (published `mandatory`)
    /// instead of dropping it in silence, and nothing was stored.
    #[error(
        "nothing consumes topic `{topic}`: no queue is bound to it on exchange `{exchange}` (the broker returned the message: {reason}); the message was not stored. A group's queue exists from its first subscribe on"
    )]
    Unroutable {
        /// The topic published to.
        topic: String,
        /// The exchange.
        exchange: String,
        /// The broker's reply text (`NO_ROUTE`).
        reason: String,
    },
    /// An acknowledgement for a delivery the consumer no longer holds: its channel closed
    /// (the broker redelivers it), or it was acknowledged already.
    #[error(
        "delivery tag {tag} is no longer held by this consumer (channel closed or already acknowledged); the broker redelivers it"
    )]
    StaleDelivery {
        /// The delivery tag.
        tag: u64,
    },
    /// An acknowledgement for a message that did not come from this backend.
    #[error("cannot acknowledge a message at position `{position}`: not an AMQP delivery")]
    NotADelivery {
        /// The message's position.
        position: String,
    },
    /// The channel closed before the acknowledgement went out.
    #[error("the channel closed before the acknowledgement; the broker redelivers the message")]
    ChannelClosed,
    /// A setting that can never work: a URL that does not parse or is not `amqp://`, a
    /// virtual host or credentials the broker refuses. No retry can fix it.
    #[error("{0}")]
    Config(String),
    /// The broker accepted the TCP connection but did not complete the AMQP handshake in
    /// time (frozen, overloaded, or not RabbitMQ): retried like an unreachable broker.
    #[error("the broker did not complete the connection handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// A replay's acknowledgements of records it re-published did not reach the broker.
    #[error(
        "{unremoved} re-published records could not be removed from the DLQ (its channel closed); they stay listed and a later replay publishes them again"
    )]
    NotSettled {
        /// How many stay in the DLQ.
        unremoved: usize,
    },
    /// Connecting failed recently; the next attempt waits for the retry delay or cooldown.
    #[error("not connected; next connection attempt in {wait:?} (last error: {last})")]
    Waiting {
        /// Until the next attempt.
        wait: Duration,
        /// The last connection error.
        last: String,
    },
    /// The AMQP client failed.
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

impl RabbitError {
    /// Whether this says the connection (rather than the request) failed.
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Waiting { .. } | Self::ChannelClosed | Self::HandshakeTimeout(_) => true,
            Self::Amqp(error) => !error.is_amqp_soft_error(),
            _ => false,
        }
    }

    /// The core's error for this failure during `operation`.
    pub(crate) fn into_broker(self, operation: &'static str) -> BrokerError {
        if let Self::Config(message) = self {
            BrokerError::config(NAME, URL_VARIABLE, message)
        } else if self.is_connection() {
            BrokerError::connection(NAME, self)
        } else {
            BrokerError::operation(NAME, operation, self)
        }
    }
}
