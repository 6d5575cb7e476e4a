//! Configuration: in code with [`configure_messaging`] (takes precedence) or from the
//! environment variables of DESIGN §5. Secrets never reach a log: `Debug` masks them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use crate::error::Error;

/// Everything the framework reads from configuration.
#[derive(Clone)]
pub struct Config {
    /// `kafka`, `rabbitmq`, `redis`, `memory` or `disabled` (`MESSAGING_BACKEND`).
    pub backend: String,
    /// Service name written into envelopes and DLQ records (`MESSAGING_SOURCE`).
    pub source: String,
    /// Kafka brokers (`KAFKA_BOOTSTRAP_SERVERS`).
    pub kafka_bootstrap_servers: String,
    /// SASL PLAIN user for Confluent Cloud (`KAFKA_API_KEY`).
    pub kafka_api_key: Option<String>,
    /// SASL PLAIN password (`KAFKA_API_SECRET`).
    pub kafka_api_secret: Option<String>,
    /// Any other librdkafka property, from `KAFKA_CONFIG_<NAME>` (`SESSION_TIMEOUT_MS` →
    /// `session.timeout.ms`).
    pub kafka_properties: BTreeMap<String, String>,
    /// AMQP URL (`RABBITMQ_URL`).
    pub rabbitmq_url: String,
    /// Redis URL (`REDIS_URL`).
    pub redis_url: String,
    /// Connection attempts before a cooldown (`MESSAGING_CONNECT_MAX_RETRIES`).
    pub connect_max_retries: u32,
    /// Wait between connection attempts (`MESSAGING_CONNECT_RETRY_DELAY`).
    pub connect_retry_delay: Duration,
    /// Wait after `connect_max_retries` failures before trying again (`MESSAGING_CONNECT_COOLDOWN`).
    pub connect_cooldown: Duration,
    /// Handlers running at once per group, order kept per key (`MESSAGING_CONCURRENCY`).
    pub concurrency: usize,
    /// Larger messages are dead-lettered as `too_large` (`MESSAGING_MAX_MESSAGE_SIZE`, bytes).
    pub max_message_size: usize,
    /// The dead-letter topic of every handler that names none (`MESSAGING_DLQ_TOPIC`);
    /// `{topic}` in it stands for the handler's topic. `None`: `<topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// How long a group may fail to fetch or to write DLQ records before `/health/ready`
    /// fails (`MESSAGING_HEALTH_STALL_AFTER`).
    pub health_stall_after: Duration,
    /// How many times `dlq replay` re-publishes one record before it refuses without
    /// `--force` (`MESSAGING_DLQ_MAX_REPLAYS`).
    pub dlq_max_replays: u32,
    /// Topic names overridden for this environment, by the name the code uses in its
    /// variable form (`MESSAGING_TOPIC_ORDERS_CREATED=staging.orders` →
    /// `"ORDERS_CREATED" → "staging.orders"`): see [`Config::resolve_topic`].
    pub topic_overrides: BTreeMap<String, String>,
    /// How many `#[event]` publishes may wait for the broker (queued, in flight or waiting to
    /// retry); more are dropped and counted (`MESSAGING_EVENT_QUEUE`).
    pub event_queue: usize,
    /// Where idempotent handlers keep their keys (`MESSAGING_IDEMPOTENCY_*`).
    pub idempotency: crate::idempotency::IdempotencyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: "memory".to_owned(),
            source: default_source(),
            kafka_bootstrap_servers: "localhost:9092".to_owned(),
            kafka_api_key: None,
            kafka_api_secret: None,
            kafka_properties: BTreeMap::new(),
            rabbitmq_url: "amqp://guest:guest@localhost:5672/%2f".to_owned(),
            redis_url: "redis://localhost:6379/0".to_owned(),
            connect_max_retries: 10,
            connect_retry_delay: Duration::from_secs(3),
            connect_cooldown: Duration::from_secs(30),
            concurrency: 16,
            max_message_size: 1024 * 1024,
            dlq_topic: None,
            health_stall_after: Duration::from_secs(30),
            dlq_max_replays: 3,
            topic_overrides: BTreeMap::new(),
            event_queue: 10_000,
            idempotency: Default::default(),
        }
    }
}

fn default_source() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "messaging".to_owned())
}

impl Config {
    /// Reads the environment; unset variables keep their defaults.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|key| std::env::var(key).ok(), std::env::vars())
    }

    /// Reads from any key-value source (the environment, a test's map).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        all: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut c = Self::default();
        let set = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        if let Some(v) = set("MESSAGING_BACKEND") {
            c.backend = v.trim().to_ascii_lowercase();
        }
        if let Some(v) = set("MESSAGING_SOURCE") {
            c.source = v;
        }
        if let Some(v) = set("KAFKA_BOOTSTRAP_SERVERS") {
            c.kafka_bootstrap_servers = v;
        }
        c.kafka_api_key = set("KAFKA_API_KEY");
        c.kafka_api_secret = set("KAFKA_API_SECRET");
        // A broker address that is set but empty is a mistake, not a request for the default.
        for key in ["KAFKA_BOOTSTRAP_SERVERS", "RABBITMQ_URL", "REDIS_URL"] {
            if get(key).is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(
                    key,
                    "is set but empty; unset it for the default or give an address",
                ));
            }
        }
        if let Some(v) = set("RABBITMQ_URL") {
            c.rabbitmq_url = v;
        }
        if let Some(v) = set("REDIS_URL") {
            c.redis_url = v;
        }
        if let Some(v) = set("MESSAGING_HEALTH_STALL_AFTER") {
            c.health_stall_after = parse_duration("MESSAGING_HEALTH_STALL_AFTER", &v)?;
        }
        if let Some(v) = set("MESSAGING_DLQ_MAX_REPLAYS") {
            c.dlq_max_replays = parse_number("MESSAGING_DLQ_MAX_REPLAYS", &v)?;
        }
        if let Some(v) = set("MESSAGING_CONNECT_MAX_RETRIES") {
            c.connect_max_retries = parse_number("MESSAGING_CONNECT_MAX_RETRIES", &v)?;
        }
        if let Some(v) = set("MESSAGING_CONNECT_RETRY_DELAY") {
            c.connect_retry_delay = parse_duration("MESSAGING_CONNECT_RETRY_DELAY", &v)?;
        }
        if let Some(v) = set("MESSAGING_CONNECT_COOLDOWN") {
            c.connect_cooldown = parse_duration("MESSAGING_CONNECT_COOLDOWN", &v)?;
        }
        if let Some(v) = set("MESSAGING_CONCURRENCY") {
            c.concurrency = parse_number("MESSAGING_CONCURRENCY", &v)?;
            if c.concurrency == 0 {
                return Err(invalid("MESSAGING_CONCURRENCY", "must be at least 1"));
            }
        }
        if let Some(v) = set("MESSAGING_EVENT_QUEUE") {
            c.event_queue = parse_number("MESSAGING_EVENT_QUEUE", &v)?;
            if c.event_queue == 0 {
                return Err(invalid("MESSAGING_EVENT_QUEUE", "must be at least 1"));
            }
        }
        if let Some(v) = set("MESSAGING_MAX_MESSAGE_SIZE") {
            c.max_message_size = parse_number("MESSAGING_MAX_MESSAGE_SIZE", &v)?;
        }
        if let Some(v) = set("MESSAGING_DLQ_TOPIC") {
            let v = v.trim().to_owned();
            if v.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "MESSAGING_DLQ_TOPIC",
                    format!(
                        "`{v}` contains whitespace; write e.g. `dead-letters` or `{{topic}}.failed`"
                    ),
                ));
            }
            c.dlq_topic = Some(v);
        }
        c.idempotency = crate::idempotency::IdempotencyConfig::from_lookup(set)?;
        for (key, value) in all {
            if let Some(name) = key.strip_prefix("MESSAGING_TOPIC_")
                && !name.is_empty()
            {
                let topic = value.trim();
                if topic.is_empty() || topic.chars().any(char::is_whitespace) {
                    return Err(invalid(
                        &key,
                        format!("`{value}` is not a topic name (empty, or with white space)"),
                    ));
                }
                c.topic_overrides.insert(name.to_owned(), topic.to_owned());
                continue;
            }
            if let Some(name) = key.strip_prefix("KAFKA_CONFIG_")
                && !name.is_empty()
            {
                let property = name.to_ascii_lowercase().replace('_', ".");
                c.kafka_properties.insert(property, value);
            }
        }
        Ok(c)
    }
}

impl Config {
    /// The topic `topic` is in this environment: the override `MESSAGING_TOPIC_<NAME>` gives
    /// (NAME is `topic` in capitals with every character but letters and digits made `_`:
    /// `orders.created` → `ORDERS_CREATED`), else `topic` itself.
    pub fn resolve_topic<'a>(&'a self, topic: &'a str) -> &'a str {
        if self.topic_overrides.is_empty() {
            return topic;
        }
        let name: String = topic
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.topic_overrides
            .get(&name)
            .map_or(topic, String::as_str)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked_properties: BTreeMap<_, _> = self
            .kafka_properties
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "key"].iter().any(|s| k.contains(s));
                (k, if secret { "***".to_owned() } else { v.clone() })
            })
            .collect();
        f.debug_struct("Config")
            .field("backend", &self.backend)
            .field("source", &self.source)
            .field("kafka_bootstrap_servers", &self.kafka_bootstrap_servers)
            .field("kafka_api_key", &self.kafka_api_key.as_ref().map(|_| "***"))
            .field(
                "kafka_api_secret",
                &self.kafka_api_secret.as_ref().map(|_| "***"),
            )
            .field("kafka_properties", &masked_properties)
            .field("rabbitmq_url", &mask_url(&self.rabbitmq_url))
            .field("redis_url", &mask_url(&self.redis_url))
            .field("connect_max_retries", &self.connect_max_retries)
            .field("connect_retry_delay", &self.connect_retry_delay)
            .field("connect_cooldown", &self.connect_cooldown)
            .field("concurrency", &self.concurrency)
            .field("max_message_size", &self.max_message_size)
            .field("dlq_topic", &self.dlq_topic)
            .field("health_stall_after", &self.health_stall_after)
            .field("dlq_max_replays", &self.dlq_max_replays)
            .field("topic_overrides", &self.topic_overrides)
            .field("event_queue", &self.event_queue)
            .field("idempotency", &self.idempotency)
            .finish()
    }
}

fn invalid(key: &str, message: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, Error> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, format!("`{value}` is not a non-negative whole number")))
}

/// Parses `"5s"`, `"250ms"`, `"1m 30s"` or a bare number of seconds.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, Error> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(value).map_err(|e| {
        invalid(
            key,
            format!("`{value}` is not a duration ({e}); write e.g. `5s` or `250ms`"),
        )
    })
}

/// The URL with its password replaced by `***`, for logs.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let masked = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // `redis://password@host` carries a bare password.
        None => "***".to_owned(),
    };
    format!("{}{}@{}", &url[..scheme_end + 3], masked, &rest[at + 1..])
}

static CONFIGURED: RwLock<Option<Config>> = RwLock::new(None);

/// Sets the configuration in code; it takes precedence over the environment. Call it before
/// the first publish or the runtime's start.
pub fn configure_messaging(config: Config) {
    *CONFIGURED.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
    crate::producer::reset_global_producer();
}

/// The configuration in force: the one set in code, else the environment's. An environment
/// that does not parse is reported once and replaced by the defaults where it failed.
pub fn current_config() -> Config {
    if let Some(c) = CONFIGURED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        return c.clone();
    }
    Config::from_env().unwrap_or_else(|error| {
        tracing::error!(%error, "invalid messaging configuration in the environment; using defaults");
        Config::default()
    })
}

/// Whether a configuration was set in code with [`configure_messaging`].
#[cfg(feature = "cli")]
pub(crate) fn configured_in_code() -> bool {
    CONFIGURED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
}

/// The configuration in force, failing on an environment that does not parse.
pub fn try_current_config() -> Result<Config, Error> {
    if let Some(c) = CONFIGURED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        return Ok(c.clone());
    }
    Config::from_env()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_topic_is_overridden_by_its_variable() {
        let c = from(&[("MESSAGING_TOPIC_ORDERS_CREATED", "staging.orders")]).unwrap();
        assert_eq!(c.resolve_topic("orders.created"), "staging.orders");
        assert_eq!(c.resolve_topic("orders-created"), "staging.orders");
        assert_eq!(c.resolve_topic("users"), "users");
        let bad = from(&[("MESSAGING_TOPIC_ORDERS", "two words")]);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("MESSAGING_TOPIC_ORDERS")
        );
    }

    fn from(vars: &[(&str, &str)]) -> Result<Config, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned(), map.clone())
    }

    #[test]
    fn defaults_follow_design() {
        let c = from(&[]).unwrap();
        assert_eq!(c.backend, "memory");
        assert_eq!(c.kafka_bootstrap_servers, "localhost:9092");
        assert_eq!(c.rabbitmq_url, "amqp://guest:guest@localhost:5672/%2f");
        assert_eq!(c.redis_url, "redis://localhost:6379/0");
        assert_eq!(c.connect_max_retries, 10);
        assert_eq!(c.connect_retry_delay, Duration::from_secs(3));
        assert_eq!(c.connect_cooldown, Duration::from_secs(30));
    }

    #[test]
    fn environment_overrides_and_kafka_properties() {
        let c = from(&[
            ("MESSAGING_BACKEND", "Redis"),
            ("MESSAGING_CONNECT_RETRY_DELAY", "250ms"),
            ("KAFKA_CONFIG_SESSION_TIMEOUT_MS", "6000"),
        ])
        .unwrap();
        assert_eq!(c.backend, "redis");
        assert_eq!(c.connect_retry_delay, Duration::from_millis(250));
        assert_eq!(c.kafka_properties["session.timeout.ms"], "6000");
    }

    #[test]
    fn a_global_dlq_topic_from_the_environment() {
        assert_eq!(from(&[]).unwrap().dlq_topic, None);
        let c = from(&[("MESSAGING_DLQ_TOPIC", " {topic}.failed ")]).unwrap();
        assert_eq!(c.dlq_topic.as_deref(), Some("{topic}.failed"));
        let e = from(&[("MESSAGING_DLQ_TOPIC", "dead letters")]).unwrap_err();
        assert!(
            e.to_string().contains("MESSAGING_DLQ_TOPIC") && e.to_string().contains("whitespace"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = from(&[("MESSAGING_CONNECT_MAX_RETRIES", "-1")]).unwrap_err();
        assert!(
            e.to_string().contains("MESSAGING_CONNECT_MAX_RETRIES"),
            "{e}"
        );
        let e = from(&[("MESSAGING_CONNECT_COOLDOWN", "soon")]).unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_url("amqp://guest:hunter2@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            mask_url("redis://:pw@localhost:6379/0"),
            "redis://:***@localhost:6379/0"
        );
        assert_eq!(mask_url("rediss://pw@h/0"), "rediss://***@h/0");
        assert_eq!(mask_url("redis://localhost:6379"), "redis://localhost:6379");
        let c = from(&[
            ("KAFKA_API_SECRET", "s3cret"),
            ("RABBITMQ_URL", "amqp://u:p4ss@h/"),
            ("KAFKA_CONFIG_SASL_PASSWORD", "x9"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["s3cret", "p4ss", "x9"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }
}
