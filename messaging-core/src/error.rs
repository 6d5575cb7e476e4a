//! Error types: [`Error`] for the framework's own failures, [`BrokerError`] for what a broker
//! reports, and [`HandlerError`] for what a handler returns.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error that can cross threads.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The framework's own errors: configuration, registry and broker failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `MESSAGING_BACKEND` (or `Config::backend`) names a broker that is not linked in.
    #[error("unknown messaging backend `{name}`; linked backends: {}", linked.join(", "))]
    UnknownBackend {
        /// The name asked for.
        name: String,
        /// The backends this binary has.
        linked: Vec<&'static str>,
    },
    /// A configuration value that does not parse.
    #[error("invalid configuration `{key}`: {message}")]
    Config {
        /// The setting (variable or `Config` field).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The handler registry is inconsistent (duplicates, conflicting routes, missing state).
    #[error("handler registry: {0}")]
    Registry(String),
    /// A payload could not be encoded.
    #[error("could not encode payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// What a broker implementation reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Could not reach the broker, or the connection was lost.
    #[error("{broker}: connection failed: {source}")]
    Connection {
        /// The broker (`kafka`, `redis` …).
        broker: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The broker refused or failed an operation (publish not confirmed, ack refused …).
    #[error("{broker}: {operation} failed: {source}")]
    Operation {
        /// The broker.
        broker: &'static str,
        /// What it was doing (`publish`, `ack` …).
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// The backend cannot do this (e.g. browsing a topic on a broker that has no such notion).
    #[error("{broker}: {operation} is not supported")]
    Unsupported {
        /// The broker.
        broker: &'static str,
        /// What it cannot do.
        operation: &'static str,
    },
    /// The consumer or broker was closed.
    #[error("{broker}: closed")]
    Closed {
        /// The broker.
        broker: &'static str,
    },
    /// The client reports itself unusable for good (a Kafka fatal error, such as a static
    /// member fenced by another with the same `group.instance.id`): retrying on it cannot
    /// help. A consumer returning it from `next_batch` is closed and replaced by a new
    /// subscription.
    #[error("{broker}: client unusable: {source}")]
    ClientDead {
        /// The broker.
        broker: &'static str,
        /// What the client said.
        #[source]
        source: BoxError,
    },
    /// A setting that can never work (a malformed URL, an unknown client property): no
    /// retry can fix it, so the connection loop gives up at once.
    #[error("{broker}: invalid `{variable}`: {message}")]
    Config {
        /// The broker.
        broker: &'static str,
        /// The variable (or `Config` field) to fix, e.g. `REDIS_URL`.
        variable: String,
        /// What is wrong with it.
        message: String,
    },
}

impl BrokerError {
    /// Shorthand for [`BrokerError::Operation`].
    pub fn operation(
        broker: &'static str,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Operation {
            broker,
            operation,
            source: source.into(),
        }
    }

    /// Shorthand for [`BrokerError::Config`].
    pub fn config(
        broker: &'static str,
        variable: impl Into<String>,
        message: impl fmt::Display,
    ) -> Self {
        Self::Config {
            broker,
            variable: variable.into(),
            message: message.to_string(),
        }
    }

    /// Whether this is a configuration error that no retry can fix.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config { .. })
    }

    /// Shorthand for [`BrokerError::ClientDead`].
    pub fn client_dead(broker: &'static str, source: impl Into<BoxError>) -> Self {
        Self::ClientDead {
            broker,
            source: source.into(),
        }
    }

    /// Whether the client that reported this is unusable for good and must be replaced.
    pub fn is_dead(&self) -> bool {
        matches!(self, Self::ClientDead { .. })
    }

    /// Shorthand for [`BrokerError::Connection`].
    pub fn connection(broker: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Connection {
            broker,
            source: source.into(),
        }
    }
}

/// Why a message failed; written into the DLQ record as `error.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned an error.
    Handler,
    /// The payload is JSON but not of the declared shape.
    Schema,
    /// The payload could not be decoded at all (not JSON, not UTF-8, no envelope).
    Decode,
    /// The handler panicked.
    Panic,
    /// The handler did not finish in time.
    Timeout,
    /// The payload is larger than the configured maximum.
    TooLarge,
}

impl FailureKind {
    /// The name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handler => "handler",
            Self::Schema => "schema",
            Self::Decode => "decode",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
        }
    }

    /// Whether another attempt could succeed. Bad payloads stay bad.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Handler | Self::Panic | Self::Timeout)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a handler returns. Any `std::error::Error` or `anyhow::Error` converts into it
/// with `?`; [`HandlerError::permanent`] marks one that retrying cannot fix.
pub struct HandlerError {
    kind: FailureKind,
    permanent: bool,
    source: BoxError,
}

impl HandlerError {
    /// A failure worth retrying (the default for `?`).
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self::new(FailureKind::Handler, error)
    }

    /// A failure that no retry can fix: the message goes to the dead-letter queue at once.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            permanent: true,
            ..Self::new(FailureKind::Handler, error)
        }
    }

    /// A failure of the given kind; retryable when the kind is.
    pub fn new(kind: FailureKind, error: impl Into<BoxError>) -> Self {
        Self {
            kind,
            permanent: !kind.is_retryable(),
            source: error.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        !self.permanent
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("permanent", &self.permanent)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

// `HandlerError` deliberately does not implement `std::error::Error`, so this blanket
// conversion can cover every error type (as `anyhow::Error` does).
impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::retryable(error)
    }
}
