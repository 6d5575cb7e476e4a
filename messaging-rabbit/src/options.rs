//! How to reach RabbitMQ and how to name what is declared there.

use std::fmt;
use std::time::Duration;

use messaging_core::config::mask_url;
use messaging_core::{BrokerError, Config};

use crate::NAME;

/// The exchange used when none is configured.
pub const DEFAULT_EXCHANGE: &str = "messaging";

/// The URL when `RABBITMQ_URL` is not set (DESIGN §5).
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672/%2f";

/// The variable the URL is read from, and which a bad URL is reported under.
pub(crate) const URL_VARIABLE: &str = "RABBITMQ_URL";
const EXCHANGE_VARIABLE: &str = "RABBITMQ_EXCHANGE";

/// RabbitMQ's default `consumer_timeout` (current versions): 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

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
    pub(crate) consumer_timeout: Option<Duration>,
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
            consumer_timeout: Some(DEFAULT_CONSUMER_TIMEOUT),
        }
    }

    /// The options `config` gives: the URL (`RABBITMQ_URL`, default
    /// `amqp://guest:guest@localhost:5672/%2f`) and exchange (`RABBITMQ_EXCHANGE`, default
    /// `messaging`) of its [`Config::settings`], its retry settings, and its service name as
    /// connection name. A `RABBITMQ_URL` set but empty is a [`BrokerError::Config`] naming it.
    pub fn from_config(config: &Config) -> Result<Self, BrokerError> {
        let settings = &config.settings;
        let url = settings
            .get_required(NAME, URL_VARIABLE)?
            .unwrap_or(DEFAULT_URL);
        let exchange = settings
            .get_non_blank(EXCHANGE_VARIABLE)
            .map_or(DEFAULT_EXCHANGE, str::trim);
        Ok(Self {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            connection_name: config.source.clone(),
            connect_max_retries: config.connect_max_retries,
            connect_retry_delay: config.connect_retry_delay,
            connect_cooldown: config.connect_cooldown,
            ..Self::new("")
        })
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

    /// The server's `consumer_timeout`: how long RabbitMQ lets a delivery stay
    /// unacknowledged before it closes the channel and redelivers (default 30 min, as
    /// RabbitMQ's; `None` when the server's is disabled). It must match the server's setting:
    /// the runtime refuses at start-up a handler whose retries could hold a message that long.
    /// The URL's `?consumer_timeout=` (`30m`, `1800000ms`, `off`) overrides it.
    pub fn consumer_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.consumer_timeout = timeout;
        self
    }

    /// The URL, its password masked.
    pub fn masked_url(&self) -> String {
        mask_url(&self.url)
    }

    /// The exchange name.
    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }

    /// The consumer timeout in force: the URL's `consumer_timeout` when it has one, else the
    /// one set in code. A value that does not parse is a configuration error.
    pub(crate) fn resolved_consumer_timeout(&self) -> Result<Option<Duration>, String> {
        let Some(query) = self.url.split_once('?').map(|(_, q)| q) else {
            return Ok(self.consumer_timeout);
        };
        let query = query.split('#').next().unwrap_or_default();
        let value = url_param(query, "consumer_timeout");
        value.map_or(Ok(self.consumer_timeout), |v| parse_consumer_timeout(&v))
    }
}

/// The last value of `key` in a query string, percent-decoding left out (a duration needs
/// none).
fn url_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .rev()
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim().to_owned())
}

/// `30m`, `1800000ms`, `1h`; `off` (or `false`, `none`) for a server without the timeout.
/// A bare number is refused: RabbitMQ's own setting is in milliseconds, a duration here is
/// read in seconds elsewhere, and the mix-up would be a factor of 1000.
fn parse_consumer_timeout(value: &str) -> Result<Option<Duration>, String> {
    let expected = "write a duration with its unit (`30m`, `1800000ms`) or `off`, matching the server's consumer_timeout";
    match value.to_ascii_lowercase().as_str() {
        "off" | "false" | "none" => return Ok(None),
        "" => return Err(format!("`consumer_timeout` is empty; {expected}")),
        v if v.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!(
                "`consumer_timeout={value}` has no unit; {expected}"
            ));
        }
        _ => {}
    }
    match messaging_core::config::parse_duration("consumer_timeout", value) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(format!(
            "`consumer_timeout={value}` is not a duration above zero; {expected}"
        )),
    }
}

impl fmt::Debug for RabbitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitOptions")
            .field("url", &self.masked_url())
            .field("exchange", &self.exchange)
            .field("connection_name", &self.connection_name)
            .field("connect_max_retries", &self.connect_max_retries)
            .field("connect_retry_delay", &self.connect_retry_delay)
            .field("connect_cooldown", &self.connect_cooldown)
            .field("queue_expires", &self.queue_expires)
            .field("consumer_timeout", &self.consumer_timeout)
            .finish()
    }
}

/// What the connection loop names as the broker: the URL, its password masked.
pub(crate) fn target(config: &Config) -> String {
    mask_url(
        config
            .settings
            .get_non_blank(URL_VARIABLE)
            .unwrap_or(DEFAULT_URL),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_variables_with_design_defaults() {
        let defaults = RabbitOptions::from_config(&Config::default()).unwrap();
        assert_eq!(defaults.url, "amqp://guest:guest@localhost:5672/%2f");
        assert_eq!(defaults.exchange_name(), "messaging");
        let config = Config::default()
            .setting("RABBITMQ_URL", "amqp://u:s3cret@h:5673/v")
            .setting("RABBITMQ_EXCHANGE", " orders ");
        let options = RabbitOptions::from_config(&config).unwrap();
        assert_eq!(options.url, "amqp://u:s3cret@h:5673/v");
        assert_eq!(options.exchange_name(), "orders");
        assert_eq!(target(&config), "amqp://u:***@h:5673/v");
        assert!(!format!("{options:?}{config:?}").contains("s3cret"));
        // An empty exchange is an unset one, as before.
        let blank = Config::default().setting("RABBITMQ_EXCHANGE", "");
        assert_eq!(
            RabbitOptions::from_config(&blank).unwrap().exchange_name(),
            "messaging"
        );
    }

    #[test]
    fn an_empty_url_is_an_error_naming_the_variable() {
        let config = Config::default().setting("RABBITMQ_URL", " ");
        match RabbitOptions::from_config(&config) {
            Err(BrokerError::Config {
                broker, variable, ..
            }) => assert_eq!((broker, variable.as_str()), ("rabbitmq", "RABBITMQ_URL")),
            other => panic!("{other:?}"),
        }
    }

    fn timeout(url: &str) -> Result<Option<Duration>, String> {
        RabbitOptions::new(url).resolved_consumer_timeout()
    }

    #[test]
    fn the_consumer_timeout_comes_from_the_url_or_defaults_to_rabbitmqs() {
        let base = "amqp://guest:guest@127.0.0.1:5672/%2f";
        assert_eq!(timeout(base), Ok(Some(DEFAULT_CONSUMER_TIMEOUT)));
        let heartbeat = format!("{base}?heartbeat=5");
        assert_eq!(timeout(&heartbeat), Ok(Some(DEFAULT_CONSUMER_TIMEOUT)));
        let hour = format!("{base}?heartbeat=5&consumer_timeout=1h");
        assert_eq!(timeout(&hour), Ok(Some(Duration::from_secs(3600))));
        let ms = format!("{base}?consumer_timeout=900000ms");
        assert_eq!(timeout(&ms), Ok(Some(Duration::from_secs(900))));
        assert_eq!(timeout(&format!("{base}?consumer_timeout=off")), Ok(None));
        let in_code = RabbitOptions::new(base).consumer_timeout(Some(Duration::from_secs(60)));
        assert_eq!(
            in_code.resolved_consumer_timeout(),
            Ok(Some(Duration::from_secs(60)))
        );
    }

    #[test]
    fn a_bad_consumer_timeout_says_what_to_write() {
        let base = "amqp://h/%2f?consumer_timeout=";
        for bad in ["1800000", "soon", "0s", ""] {
            let error = timeout(&format!("{base}{bad}")).unwrap_err();
            assert!(error.contains("consumer_timeout"), "{error}");
            assert!(error.contains("`30m`"), "{error}");
        }
    }
}
