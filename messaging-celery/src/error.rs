//! The backend's errors, and how they become the core's [`BrokerError`].

use messaging_core::BrokerError;

/// The name the backend is registered under (`MESSAGING_BACKEND=celery`).
pub const NAME: &str = "celery";

/// What can go wrong in the Celery backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeleryError {
    /// A setting that can never work; names the variable.
    #[error("invalid `{variable}`: {message}")]
    Config {
        /// The variable to fix (`CELERY_BROKER_URL`, `CELERY_TASKS` …).
        variable: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A message published to a topic that no `CELERY_TASKS` entry maps to a task.
    #[error(
        "topic `{topic}`{} has no Celery task; map it in CELERY_TASKS (`{topic}=module.task` or `{topic}=module.task@queue`)",
        event.as_ref().map(|e| format!(" (event `{e}`)")).unwrap_or_default()
    )]
    Unmapped {
        /// The topic.
        topic: String,
        /// The event name, when the message had one.
        event: Option<String>,
    },
    /// A message that cannot become a Celery task (its body is not JSON, a header clashes
    /// with one of Celery's).
    #[error("cannot make a Celery task of a message to `{topic}`: {reason}")]
    Encode {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The AMQP client failed.
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    /// RabbitMQ refused a publish (a negative publisher confirm).
    #[error("RabbitMQ refused the message (publisher confirm nack)")]
    Nacked,
    /// RabbitMQ returned a publish no queue takes.
    #[error("RabbitMQ returned the message to `{queue}` unrouted: {reason}")]
    Unroutable {
        /// The queue it was meant for.
        queue: String,
        /// The broker's reply.
        reason: String,
    },
    /// The consumer or broker was closed.
    #[error("closed")]
    Closed,
}

impl CeleryError {
    pub(crate) fn config(variable: &'static str, message: impl Into<String>) -> Self {
        Self::Config {
            variable,
            message: message.into(),
        }
    }

    /// The core's error for this failure of `operation`.
    pub(crate) fn into_broker(self, operation: &'static str) -> BrokerError {
        match self {
            Self::Config { variable, message } => BrokerError::config(NAME, variable, message),
            Self::Closed => BrokerError::Closed { broker: NAME },
            other => BrokerError::operation(NAME, operation, other),
        }
    }
}
