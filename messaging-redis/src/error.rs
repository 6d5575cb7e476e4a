//! This crate's own errors, and how `redis` errors map onto [`BrokerError`].

use messaging_core::BrokerError;
use redis::RedisError;

pub(crate) const BROKER: &str = "redis";

/// What can go wrong in this crate besides the `redis` client itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBrokerError {
    /// `REDIS_URL` does not parse.
    #[error("invalid Redis URL: {0}")]
    Url(String),
    /// A query parameter of `REDIS_URL` has a value that does not parse.
    #[error(
        "invalid Redis URL parameter `{key}={value}`: expected {expected} (parameters read by messaging-redis: {known})"
    )]
    UrlOption {
        /// The parameter.
        key: &'static str,
        /// Its value.
        value: String,
        /// What it takes.
        expected: &'static str,
        /// Every parameter this crate reads.
        known: String,
    },
    /// `rediss://` needs the `tls` feature of messaging-redis.
    #[error("`rediss://` needs the `tls` feature of messaging-redis")]
    TlsDisabled,
    /// A TLS certificate or key file named in the options cannot be read.
    #[error("cannot read TLS file {}: {error}", path.display())]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        error: String,
    },
    /// Redis answered with something this crate does not expect.
    #[error("unexpected reply to {command}: {detail}")]
    Reply {
        /// The command sent.
        command: &'static str,
        /// What came back.
        detail: String,
    },
    /// A key this crate reads or writes as a stream holds another type (`SET orders x`).
    #[error("key `{key}` holds a {found}, not a stream: delete or rename it")]
    NotAStream {
        /// The key.
        key: String,
        /// The type it holds.
        found: String,
    },
    /// A header name that the entry layout reserves.
    #[error("header `{0}` is reserved by the Redis stream entry layout")]
    ReservedHeader(String),
}

impl RedisBrokerError {
    pub(crate) fn reply(command: &'static str, detail: impl Into<String>) -> Self {
        Self::Reply {
            command,
            detail: detail.into(),
        }
    }
}

/// Whether the connection the error came from is unusable (reconnect before the next try).
pub(crate) fn is_connection_error(error: &RedisError) -> bool {
    error.is_unrecoverable_error() || error.is_io_error() || error.is_timeout()
}

/// The server no longer has the group (or the stream): it restarted without persistence, or
/// someone deleted the key.
pub(crate) fn is_no_group(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// A command met a key of another type than it works on (a string where a stream belongs).
pub(crate) fn is_wrong_type(error: &RedisError) -> bool {
    error.code() == Some("WRONGTYPE")
}

/// Maps a `redis` error of `operation`: connection trouble as [`BrokerError::Connection`],
/// anything else as [`BrokerError::Operation`].
pub(crate) fn broker_error(operation: &'static str, error: RedisError) -> BrokerError {
    if is_connection_error(&error) {
        BrokerError::connection(BROKER, error)
    } else {
        BrokerError::operation(BROKER, operation, error)
    }
}

pub(crate) fn own_error(operation: &'static str, error: RedisBrokerError) -> BrokerError {
    BrokerError::operation(BROKER, operation, error)
}
