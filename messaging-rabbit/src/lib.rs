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
//!   reconnection. A group's queue exists from its first `subscribe` on, and keeps what
//!   arrives while its consumers are away.
//! - **Nothing published is dropped in silence.** A topic exchange drops a message no
//!   queue is bound to. Every publish is therefore `mandatory`: the broker returns such a
//!   message (`basic.return`, `NO_ROUTE`) and `publish` (so `send`, `publish_event`)
//!   fails with [`RabbitError::Unroutable`] naming the topic; nothing was stored. This
//!   backend does not keep what is published to a topic with no group (as Kafka and Redis
//!   do): start the consuming group once (its queue stays) before publishing, or declare the
//!   topic kept. The framework's own publishes go to declared topics (dead-letter records)
//!   or to topics a group reads (a replay), so they are routed; a replay to a topic whose
//!   group queue was deleted fails, and the record stays in the DLQ. `#[event]` publishes
//!   that fail this way are logged and counted as dropped by the core.
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
//! # Request-reply
//!
//! Replies arrive by RabbitMQ's direct reply-to: `Broker::open_replies` consumes the
//! pseudo-queue [`DIRECT_REPLY_TO`] without acknowledgements on a channel of the publishing
//! connection, and requests go out on that same channel (RabbitMQ answers only there), to
//! the topic exchange. No queue is declared per request or per instance. The correlation id
//! and the reply address travel as the AMQP `correlation_id` and `reply_to` properties as
//! well as the `x-correlation-id` and `x-reply-to` headers, and a delivered message's
//! properties become those headers: an AMQP RPC client in another language can call our
//! handlers, and ours can call its servers. `Broker::publish_reply` publishes to the default
//! exchange with the request's `reply_to` as routing key and is not `mandatory`: a reply
//! whose requester is gone is dropped by RabbitMQ (direct reply-to is at most once) and is
//! not an error, the one exception to "nothing published is dropped in silence".
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
//! # How long a message may be held: `consumer_timeout`
//!
//! RabbitMQ takes back a delivery left unacknowledged longer than its `consumer_timeout`
//! (30 minutes by default in current versions; `consumer_timeout` in `rabbitmq.conf`, in
//! milliseconds): it closes the channel and redelivers every message the channel held.
//! Retries are in-process and hold the message unacknowledged through every back-off, so
//! the total back-off of a handler (plus its attempts' time limits) must stay under it.
//! [`Broker::max_unacknowledged`] reports the limit, and the runtime refuses at start-up,
//! naming them, handlers whose
//! [`RetryPolicy::max_hold`](messaging_core::RetryPolicy::max_hold) reaches it.
//!
//! This backend cannot read the server's setting: say it in `RABBITMQ_URL` as
//! `?consumer_timeout=45m` (a duration with its unit, e.g. `2700000ms`; `off` when the
//! server has the timeout disabled), or with [`RabbitOptions::consumer_timeout`]. It
//! defaults to RabbitMQ's 30 minutes and **must match the server's value**: a smaller
//! one refuses handlers needlessly, a larger one lets a long back-off end in a closed
//! channel and a redelivery (and the handler's remaining attempts start over). The check
//! does not count the time a message waits in the prefetch buffer before its first
//! attempt, nor attempt times of a handler without a `timeout`: keep a margin.
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
//! The registered backend reads `RABBITMQ_URL` (default
//! `amqp://guest:guest@localhost:5672/%2f`) and `RABBITMQ_EXCHANGE` from the framework's
//! `Config::settings` (filled from the environment by `Config::from_env`, or set in code with
//! `Config::setting`); core never reads them. The publisher and the consumers connect with
//! this one URL: there are no per-client settings. A `RABBITMQ_URL` set but empty is an
//! error naming it; the connection loop names the URL with its password masked.
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
#![forbid(unsafe_code)]

mod broker;
mod connection;
mod consumer;
mod error;
mod headers;
mod lag;
mod options;
mod publisher;
mod replies;
mod topology;

use std::sync::Arc;

use messaging_core::{BoxFuture, Broker, BrokerError, BrokerFactory, Config};

pub use broker::RabbitBroker;
pub use error::RabbitError;
pub use options::{DEFAULT_CONSUMER_TIMEOUT, DEFAULT_EXCHANGE, DEFAULT_URL, RabbitOptions};
pub use replies::DIRECT_REPLY_TO;

/// The name the backend is registered under.
pub const NAME: &str = "rabbitmq";

fn connect_configured(config: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    Box::pin(async move { Ok(RabbitBroker::from_config(config).await?.into_dyn()) })
}

/// The settings a connection would refuse at once: an empty or malformed `RABBITMQ_URL`, a
/// bad `consumer_timeout` in it. Whether the broker accepts the virtual host and the
/// credentials is found out only by connecting.
fn check(config: &Config) -> Result<(), BrokerError> {
    let options = RabbitOptions::from_config(config)?;
    connection::amqp_uri(&options.url).map_err(|e| e.into_broker("check"))?;
    options
        .resolved_consumer_timeout()
        .map_err(|e| RabbitError::Config(e).into_broker("check"))?;
    Ok(())
}

inventory::submit! {
    BrokerFactory::new(NAME, connect_configured)
        .variables(&["RABBITMQ_"])
        .target(options::target)
        .check(check)
        .bindings(topology::asyncapi_bindings)
}
