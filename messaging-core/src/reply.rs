//! What a broker provides for request-reply: an inbox where this instance's replies arrive,
//! and the kinds of reply on the wire.
//!
//! A request carries [`header::REPLY_TO`] (the inbox's address) and
//! [`header::CORRELATION_ID`]; every reply carries the same correlation id and a
//! [`header::REPLY_KIND`]. Each broker picks the address that suits it (RabbitMQ's direct
//! reply-to, a shared reply topic on Kafka, a capped stream per instance on Redis) so that no
//! topic, queue or stream is made per request.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::error::BrokerError;
use crate::handler::BoxFuture;
use crate::message::{Message, OutgoingMessage, header};

/// This instance's reply inbox, opened once by [`crate::Broker::open_replies`].
#[non_exhaustive]
pub struct ReplyInbox {
    /// What requests carry in [`header::REPLY_TO`]; a responder passes it to
    /// [`crate::Broker::publish_reply`] as the reply's topic.
    pub address: String,
    /// The replies as they arrive, each with its [`header::CORRELATION_ID`] and
    /// [`header::REPLY_KIND`]. Replies to other instances may arrive too where the address is
    /// shared (a Kafka reply topic): the requester keeps those it asked for. Closed when the
    /// inbox is lost (a dropped connection); the requester then opens another.
    pub replies: mpsc::Receiver<Message>,
    /// How requests must go out for their replies to reach this inbox (RabbitMQ's direct
    /// reply-to answers only on the channel that published). `None`: [`crate::Broker::publish`].
    pub publisher: Option<Arc<dyn RequestPublisher>>,
}

impl ReplyInbox {
    /// An inbox at `address` whose replies arrive on `replies`; requests go out with
    /// [`crate::Broker::publish`].
    pub fn new(address: impl Into<String>, replies: mpsc::Receiver<Message>) -> Self {
        Self {
            address: address.into(),
            replies,
            publisher: None,
        }
    }

    /// Requests go out through `publisher` instead.
    pub fn with_publisher(mut self, publisher: Arc<dyn RequestPublisher>) -> Self {
        self.publisher = Some(publisher);
        self
    }
}

impl std::fmt::Debug for ReplyInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyInbox")
            .field("address", &self.address)
            .field("own_publisher", &self.publisher.is_some())
            .finish_non_exhaustive()
    }
}

/// Publishes requests whose replies must come back to one [`ReplyInbox`].
pub trait RequestPublisher: Send + Sync + 'static {
    /// Publishes `request` (with its reply headers already set) and resolves once the broker
    /// has acknowledged it.
    fn publish(&self, request: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// What a reply is, from its [`header::REPLY_KIND`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// The handler's `Ok` value, as JSON.
    Ok,
    /// The handler failed for good: `{"kind": …, "message": …}`.
    Error,
    /// One item of a streamed reply, as JSON.
    Chunk,
    /// A streamed reply is complete; empty body.
    End,
}

impl ReplyKind {
    /// Its header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Chunk => "chunk",
            Self::End => "end",
        }
    }

    /// The kind a header value names.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "ok" => Some(Self::Ok),
            "error" => Some(Self::Error),
            "chunk" => Some(Self::Chunk),
            "end" => Some(Self::End),
            _ => None,
        }
    }

    /// The kind of `message`'s reply; a reply without the header (a foreign AMQP RPC
    /// server's) is a plain `Ok`.
    pub fn of(message: &Message) -> Option<Self> {
        match message.headers.get(header::REPLY_KIND) {
            Some(value) => Self::parse(value),
            None => Some(Self::Ok),
        }
    }
}
