//! How to reach RabbitMQ and how to name what is declared there.

use std::fmt;
use std::time::Duration;

use messaging_core::Config;
use messaging_core::config::mask_url;

/// The exchange used when none is configured.
pub const DEFAULT_EXCHANGE: &str = "messaging";

/// Connection and topology settings of a [`RabbitBroker`](crate::RabbitBroker).
#[derive(Clone)]
pub struct RabbitOptions {
    pub(crate) url: String,
    pub(crate) exchange: String,
    pub(crate) connection_name: String,
    pub(crate) connect_max_retries: u32,
    pub(crate) connect_retry_delay: Duration,
    pub(crate) connect_cooldown: Duration,
    pub(crate) queue_expires: Option<Duration>,
}

impl RabbitOptions {
    /// Defaults for `url` (`amqp://user:password@host:port/vhost`, the vhost URL-encoded,
    /// `%2f` for `/`): exchange `messaging`, the retry settings of [`Config::default`].
    pub fn new(url: impl Into<String>) -> Self {
        let defaults = Config::default();
        Self {
            url: url.into(),
            exchange: DEFAULT_EXCHANGE.to_owned(),
            connection_name: defaults.source,
            connect_max_retries: defaults.connect_max_retries,
            connect_retry_delay: defaults.connect_retry_delay,
            connect_cooldown: defaults.connect_cooldown,
            queue_expires: None,
        }
    }

    /// The URL and retry settings of `config`, its service name as connection name.
    pub fn from_config(config: &Config) -> Self {
        Self {
            url: config.rabbitmq_url.clone(),
            connection_name: config.source.clone(),
            connect_max_retries: config.connect_max_retries,
            connect_retry_delay: config.connect_retry_delay,
            connect_cooldown: config.connect_cooldown,
            ..Self::new("")
        }
    }

    /// The topic exchange everything is published to (default `messaging`).
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The prefix of the connection names shown by `rabbitmqctl list_connections` and the
    /// management UI (default: the service name). Connections are named
    /// `<prefix> publisher` and `<prefix> consumer <group>`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Reconnection: `max_retries` attempts `retry_delay` apart, then a pause of `cooldown`.
    pub fn reconnect(
        mut self,
        max_retries: u32,
        retry_delay: Duration,
        cooldown: Duration,
    ) -> Self {
        self.connect_max_retries = max_retries.max(1);
        self.connect_retry_delay = retry_delay;
        self.connect_cooldown = cooldown;
        self
    }

    /// Declares queues with `x-expires`: RabbitMQ deletes a queue unused (no consumer, no
    /// redeclaration) for this long, messages included. Off by default; meant for tests and
    /// throw-away environments, never for a group whose messages matter. A queue declared
    /// once with another value cannot be redeclared (`PRECONDITION_FAILED`).
    pub fn queue_expires(mut self, after: Duration) -> Self {
        self.queue_expires = Some(after);
        self
    }

    /// The exchange name.
    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }
}

impl fmt::Debug for RabbitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitOptions")
            .field("url", &mask_url(&self.url))
            .field("exchange", &self.exchange)
            .field("connection_name", &self.connection_name)
            .field("connect_max_retries", &self.connect_max_retries)
            .field("connect_retry_delay", &self.connect_retry_delay)
            .field("connect_cooldown", &self.connect_cooldown)
            .field("queue_expires", &self.queue_expires)
            .finish()
    }
}
