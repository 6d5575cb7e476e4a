//! The RabbitMQ backend of `messaging`, on [`lapin`]. Linking this crate registers it under
//! the name `rabbitmq`, so `MESSAGING_BACKEND=rabbitmq RABBITMQ_URL=amqp://…` runs every
//! handler unchanged. For tests and tools, [`RabbitBroker::connect`] builds one in code.
//!
//! # Topology
//!
//! - One durable **topic exchange**, `messaging` unless configured otherwise
//!   ([`RabbitOptions::exchange`], or `RABBITMQ_EXCHANGE` for the registered backend).
//!   Every message is published to it with its topic as routing key.
//! - Per **group**, one durable queue named `<exchange>.group.<group>`, bound to each of the
//!   group's topics. Instances of a group consume from the same queue and share its
//!   messages; every group has its own queue and gets every message.
//! - Per **kept topic** (`Broker::declare_topics`: the dead-letter topics, declared by the
//!   runtime at start-up), one durable queue named `<exchange>.topic.<topic>` bound to that
//!   topic alone, so dead-letter records are kept with no consumer. `browse` reads it.
//! - Topics are bound literally. On a topic exchange `*` and `#` are wildcards, so topics
//!   containing them are refused (`RabbitError::InvalidTopic`); `.` is fine.
//! - Everything is declared idempotently when a connection opens, and again after each
//!   reconnection. A message published to a topic that no queue is bound to yet is
//!   dropped by RabbitMQ, as on any topic exchange: a group's queue exists from its first
//!   `subscribe` on, and keeps what arrives while its consumers are away.
//! - [`StartFrom`](messaging_core::StartFrom) has no effect: a queue holds what was
//!   published since it was first declared and not yet acknowledged, so a new group starts
//!   at the latest message and an existing one where it left off, whatever is asked.
//!
//! # Dead-letter replay
//!
//! `consumer dlq replay` takes a snapshot (`Broker::dlq_snapshot`) on a channel of its own:
//! it reads the kept queue's message count, takes that many records at most with
//! `basic.get`, and holds them unacknowledged. Records dead-lettered after that stay in the
//! queue for the next replay, so a replay ends even while a handler keeps failing. Settling
//! acknowledges the re-published records (they leave the queue) and rejects the others with
//! requeue, back in their places: a truncated record, a message that is not a record, one
//! refused for its replay count is never deleted. A snapshot dropped unsettled (a dry run)
//! closes its channel, which returns every record. While a replay runs, the records it
//! holds are not shown by `dlq list`.
//!
//! # Messages
//!
//! Published persistent (delivery mode 2), each `publish` awaiting its publisher confirm (a
//! nack is an error). Every header of the outgoing message travels as an AMQP string header
//! (event name, id, trace id, the framework's attempt counter …); the key travels as the
//! `x-message-key` header and comes back as [`Message::key`](messaging_core::Message)
//! (not among the headers); the event id is also the AMQP `message-id`. Headers of other
//! AMQP types sent by other clients are turned into text, never rejected. A delivery's
//! position is its delivery tag.
//!
//! # Consuming and acknowledging
//!
//! Each consumer has its own connection and channel with `basic.qos` prefetch set to
//! [`Subscription::prefetch`](messaging_core::Subscription) (at most 65 535), and acknowledges
//! manually: the runtime acknowledges after the handler succeeded or the dead-letter record
//! was confirmed. Messages of one queue arrive in order. An acknowledgement for a delivery
//! whose channel has closed fails (the broker redelivers that message). `ack` hands the
//! `basic.ack` to the connection without waiting for it to be written (AMQP acks get no
//! reply, and the wait would cost two thread hops per message); closing the consumer waits
//! for them, and one lost with its connection means a redelivery, never a loss.
//!
//! # Reconnection
//!
//! Connections are named `<name> publisher` and `<name> consumer <group>` (the service name
//! unless [`RabbitOptions::connection_name`] says otherwise). When one is lost (a broker
//! restart, `rabbitmqctl close_all_connections`), the consumer reconnects on its next fetch,
//! declares its queue and bindings again and consumes anew; the publisher reconnects on its
//! next publish, retrying once a publish lost with its connection. Attempts follow the
//! configuration: `connect_max_retries` attempts `connect_retry_delay` apart, then
//! `connect_cooldown`. Unacknowledged messages are redelivered by RabbitMQ, never lost.
//!
//! # Configuration errors, heartbeats
//!
//! The URL is checked before connecting: one that does not parse, another scheme than
//! `amqp://` (`amqps://` included: TLS is not built in), or no host is a configuration error
//! naming `RABBITMQ_URL` (`BrokerError::Config`, password masked), and so is the broker's
//! refusal of the virtual host (`NOT_ALLOWED`) or of the credentials (`ACCESS_REFUSED`):
//! the runtime then stops at once instead of retrying. An unreachable broker stays a
//! connection error, retried.
//!
//! Connections ask for a 10 s heartbeat unless the URL sets one (`?heartbeat=30`;
//! RabbitMQ's own default is 60 s). A broker that stops answering (frozen, or a link that
//! silently drops packets) is noticed after two missed heartbeats: the connection fails, a
//! waiting `next_batch` returns an error (which `/health/ready` reports once it lasts),
//! and a publish waiting for its confirm fails. The TCP connection and handshake may take
//! 10 s (`?connection_timeout=` in milliseconds), since a frozen broker still accepts TCP
//! connections.

mod broker;
mod connection;
mod consumer;
mod error;
mod headers;
mod options;
mod publisher;
mod topology;

use std::sync::Arc;

use messaging_core::{BoxFuture, Broker, BrokerError, BrokerFactory, Config};

pub use broker::RabbitBroker;
pub use error::RabbitError;
pub use options::{DEFAULT_EXCHANGE, RabbitOptions};

/// The name the backend is registered under.
pub const NAME: &str = "rabbitmq";

fn connect_configured(config: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    Box::pin(async move { Ok(RabbitBroker::from_config(config).await?.into_dyn()) })
}

inventory::submit! {
    BrokerFactory { name: NAME, connect: connect_configured }
}
