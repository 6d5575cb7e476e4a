//! The Redis Streams backend of `messaging`, on the `redis` crate (async, Tokio).
//!
//! Linking this crate registers the broker under the name `redis`: with
//! `MESSAGING_BACKEND=redis REDIS_URL=redis://…` every handler runs unchanged. In code, use
//! [`RedisBroker::connect_url`] (or [`RedisBroker::connect`] with [`RedisOptions`]) and hand it
//! to `Runtime::builder().broker(…)`.
//!
//! Needs Redis 6.2 or later (`XAUTOCLAIM`), or a server speaking its stream commands; Redis
//! Cluster is not supported (one consumer reads all its streams in one command, which would
//! cross hash slots).
//!
//! # Streams and entries
//!
//! One stream per topic, named as the topic; a dead-letter topic (`<topic>.dlq`) is a stream
//! like any other. Each message is one entry with these fields, in this order:
//!
//! | field | content |
//! |---|---|
//! | `payload` | the body, bytes exactly as published |
//! | `x-message-key` | the message key, when there is one |
//! | every header | one field per header under its own name: `x-event-name`, `x-event-id`, `x-trace-id`, `x-messaging-attempt`, `x-messaging-dlq`, `x-messaging-replayed`, and the publisher's own |
//!
//! A header named `payload` is refused at publish. An entry with no `payload` field (written
//! by another program) is delivered with its fields as a JSON object for body and no headers.
//! A delivered message's position is its entry id (`stream id 1718000000000-0`), which is
//! also what dead-letter records show.
//!
//! # Groups and consumers
//!
//! Each handler group is a Redis consumer group, created with `XGROUP CREATE … MKSTREAM` at `$`
//! (only what is published from then on) or at `0` with `--from-beginning`. Every consumer
//! is a member with a unique name (`<prefix>-<pid>-<random>`) reading with
//! `XREADGROUP … COUNT n BLOCK ms` over all its streams on a connection of its own, since a
//! blocking read would stall a shared one; publishing, acknowledging and reclaiming share one
//! multiplexed connection. Each fetch reads up to the batch the runtime asks for (the
//! subscription's `prefetch` is not used).
//!
//! Concurrent publishes are pipelined: each waits for its own `XADD` reply, but they travel
//! together, one pipeline per round trip, and a failing one fails alone. Acknowledging queues
//! the entry and returns; a task sends the queue as one `XACK` per stream per round trip, so
//! handlers never wait on the network to acknowledge. An `XACK` that fails is logged and the
//! entry, still pending, is reclaimed and delivered again; `close` waits for the queue.
//!
//! Dead-letter streams are declared at start-up (`declare_topics`) with a placeholder group,
//! [`KEEP_GROUP`], so they exist before their first record; Redis keeps a stream's entries
//! with or without readers, and records are never trimmed.
//!
//! # Reclaiming
//!
//! An entry delivered to a consumer stays in the group's pending list until acknowledged. Every
//! consumer runs an `XAUTOCLAIM` round over its streams about every second, taking over entries
//! idle for `reclaim_idle` (default 30 s): those of consumers that died. A live consumer keeps
//! the entries it still holds (delivered, not yet acknowledged) from idling that long, so a
//! message being retried stays with its owner however long its back-off: every quarter of
//! `reclaim_idle` (at most 10 s) a task of the consumer asks which of its entries have idled
//! that long (`XPENDING … IDLE`) and claims them again for itself (`XCLAIM … JUSTID`, with the
//! same minimum idle time), so none idles past about half of `reclaim_idle`. An entry
//! acknowledged meanwhile is not brought back (it is no longer pending), and one another member
//! took over (its owner was cut off from Redis for `reclaim_idle`) is not taken back (its idle
//! time was just reset). The owner's process must live and reach Redis: an entry whose `XACK`
//! failed is no longer refreshed, and idles out to be delivered again. A consumer dropped
//! without `close` hands its entries back at once (they are marked idle), so the next round
//! anywhere takes them; a process that crashes leaves them for `reclaim_idle`. The attempt
//! count of a reclaimed entry continues from the `x-messaging-attempt` header, never from
//! Redis's delivery counter. Entries deleted or trimmed while pending are acknowledged and
//! skipped. Names of consumers idle for `forget_after` (default 1 h) with nothing pending are
//! removed from the group, so crashed processes do not pile up in `XINFO CONSUMERS`; a clean
//! `close` removes its own name at once. A consumer also re-reads its own pending list on start
//! and after a read whose reply it did not see (connection lost, future dropped), so
//! `next_batch` loses nothing when cancelled.
//!
//! # Connection loss
//!
//! The shared connection reconnects by itself; the reading connection is opened again on the
//! next fetch. When the server comes back without the groups (restarted without
//! persistence), they are created again, from `0`, as the first `NOGROUP` error is seen.
//!
//! # URL
//!
//! `redis://[user[:password]@]host[:port][/db]` (a password alone: `redis://:password@host`),
//! `rediss://…` for TLS, `redis+unix:///path` for a socket; `?protocol=resp3` is passed on.
//! TLS (the default `tls` feature: rustls on ring, no OpenSSL) verifies the server against
//! the system's root certificates, or against the CA file named by `tls_ca=/path/ca.pem`;
//! `tls_cert=…&tls_key=…` add a client certificate (mutual TLS). The other query parameters
//! of [`RedisOptions`] tune this crate: `maxlen=100000` (approximate `MAXLEN ~` on publish;
//! dead-letter records are never trimmed), `reclaim_idle=30s`, `block=2s`,
//! `release_on_drop=false`, `forget_after=1h` (keep it well above `block`),
//! `consumer_prefix=orders`. They are taken off the URL before the `redis` client sees it. A
//! password never reaches a log.
//!
//! The registered backend reads `REDIS_URL` (default `redis://localhost:6379/0`) from the
//! framework's `Config::settings` (filled from the environment by `Config::from_env`, or set
//! in code with `Config::setting`); core never reads it. The publisher and the consumers
//! share this one URL: there are no per-client settings. Set but empty, it is an error
//! naming it. The connection loop names the URL with its password masked.
//!
//! A URL that can never work (it does not parse, another scheme, a port above 65535, a
//! database that is not a number, a parameter that does not parse, an unreadable TLS file)
//! fails `connect` at once, before any connection attempt, with `BrokerError::Config`
//! naming `REDIS_URL`, so the consumer exits instead of retrying; a server that does not
//! answer is a connection error, retried.
//!
//! With TLS, rustls uses the crypto provider installed for the process, or else the one its
//! crate features name (ring, enabled by this crate). A service that also enables rustls'
//! `aws-lc-rs` feature installs one itself (`CryptoProvider::install_default`) first.
//!
//! # Keys of another type
//!
//! A topic key holding something other than a stream (`SET orders.created x`) makes
//! `subscribe` of the groups reading it, and `next_batch` of their consumers, fail with an
//! error naming the key (not a configuration error: the runtime retries that group and
//! the others go on). A group reading several topics fails as a whole while one of them is
//! broken. A dead-letter key of another type is logged at start-up and fails only the
//! records written to it.
//!
//! # Request-reply
//!
//! Each instance that sends requests has one reply stream, opened at its first request:
//! `messaging.replies.<uuid v7>` ([`REPLY_PREFIX`]), which requests carry in `x-reply-to`.
//! A reply is an entry of the usual layout, written with `XADD … MAXLEN ~ <cap>` and a
//! `PEXPIRE <ttl>` in one `MULTI`/`EXEC`: `REDIS_REPLY_MAXLEN` (default 10000) and
//! `REDIS_REPLY_TTL` (default `10m`), or [`RedisOptions::reply_maxlen`] and
//! [`RedisOptions::reply_ttl`] in code; unset or blank takes the default, anything but a
//! number (or duration) above zero is a `BrokerError::Config` naming the variable. The
//! requester reads its stream from the start with `XREAD BLOCK` on a connection of its own
//! (client name: the stream's), hands each reply on with its headers, and trims what it
//! handed on (`XTRIM … MINID`); when its inbox is dropped it deletes the stream. So no key is
//! made per request, an idle instance keeps at most an empty stream that expires, and the
//! stream of one that stopped reading or died holds at most about the cap and expires
//! `ttl` after the last reply; a reply to such a requester is no error. A lost reading
//! connection is reconnected, with back-off, for as long as the inbox lives, resuming after
//! the last entry read: the address stays valid and replies sent meanwhile are kept. A
//! stream name outside the prefix (a foreign requester's own stream) gets the cap but no
//! expiry.
//!
//! # Replaying dead letters
//!
//! `dlq_snapshot` reads the dead-letter stream with `XRANGE` up to its last entry at that
//! moment (no consumer group, nothing to join); settling deletes exactly the re-published
//! entries with `XDEL`. Truncated records, entries that are not records and records refused
//! by the replay stay in the stream and are listed by `dlq list`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), messaging_core::BrokerError> {
//! use messaging_redis::RedisBroker;
//! let broker = RedisBroker::connect_url("redis://127.0.0.1:6379/0?reclaim_idle=10s").await?;
//! let runtime = messaging_core::Runtime::builder().broker(broker.into_dyn());
//! # let _ = runtime; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod acker;
mod broker;
mod consumer;
mod entry;
mod error;
mod idempotency;
mod lag;
mod options;
mod publisher;
mod replies;

use std::sync::Arc;

use messaging_core::config::mask_url;
use messaging_core::{BoxFuture, Broker, BrokerError, BrokerFactory, Config};

pub use broker::{KEEP_GROUP, RedisBroker};
pub use entry::PAYLOAD_FIELD;
pub use error::RedisBrokerError;
pub use idempotency::RedisIdempotencyStore;
pub use options::RedisOptions;
pub use replies::REPLY_PREFIX;

/// The URL when `REDIS_URL` is not set (DESIGN §5).
pub const DEFAULT_URL: &str = "redis://localhost:6379/0";

/// The URL `config` gives: `REDIS_URL` of its [`Config::settings`], else [`DEFAULT_URL`]; set
/// but empty is a [`BrokerError::Config`] naming it.
fn configured_url(config: &Config) -> Result<&str, BrokerError> {
    Ok(config
        .settings
        .get_required(error::BROKER, broker::URL_VARIABLE)?
        .unwrap_or(DEFAULT_URL))
}

/// The options `config` gives: the defaults, the service name as consumer prefix, and the
/// settings besides the URL (`REDIS_REPLY_MAXLEN`, `REDIS_REPLY_TTL`); the URL's own
/// parameters apply on top when connecting.
fn configured_options(config: &Config) -> Result<RedisOptions, BrokerError> {
    let mut options = RedisOptions {
        consumer_prefix: config.source.clone(),
        ..RedisOptions::default()
    };
    options.apply_settings(&config.settings)?;
    Ok(options)
}

fn connect(config: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    Box::pin(async move {
        let options = configured_options(config)?;
        let broker = RedisBroker::connect(configured_url(config)?, options).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    })
}

/// What the connection loop names as the server: the URL, its password masked.
fn target(config: &Config) -> String {
    mask_url(configured_url(config).unwrap_or_default())
}

/// The settings a connection would refuse before any attempt: the URL and the other
/// settings, read as `connect` reads them, without connecting.
fn check(config: &Config) -> Result<(), BrokerError> {
    let mut options = configured_options(config)?;
    broker::open_client(configured_url(config)?, &mut options).map(drop)
}

inventory::submit! {
    BrokerFactory::new(error::BROKER, connect)
        .variables(&["REDIS_"])
        .target(target)
        .check(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_comes_from_its_variable_with_the_design_default() {
        assert_eq!(configured_url(&Config::default()).unwrap(), DEFAULT_URL);
        let config = Config::default().setting("REDIS_URL", "rediss://:s3cret@h:6380/2");
        assert_eq!(
            configured_url(&config).unwrap(),
            "rediss://:s3cret@h:6380/2"
        );
        assert_eq!(target(&config), "rediss://:***@h:6380/2");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(check(&config).is_ok());
        assert!(check(&Config::default().setting("REDIS_URL", "http://h/0")).is_err());
        let empty = Config::default().setting("REDIS_URL", "");
        assert!(check(&empty).is_err());
        match configured_url(&empty) {
            Err(BrokerError::Config {
                broker, variable, ..
            }) => assert_eq!((broker, variable.as_str()), ("redis", "REDIS_URL")),
            other => panic!("{other:?}"),
        }
    }
}
