//! Configuration: in code with [`configure_messaging`] (takes precedence) or from the
//! environment variables of DESIGN §5. Secrets never reach a log: `Debug` masks them.
//!
//! Core reads only the framework's own settings (`MESSAGING_*`). A broker's settings are
//! passed on unread as [`Settings`]: the variables whose names start with a prefix that a
//! linked broker crate registered (see [`BrokerFactory::variables`]), which that crate parses
//! when it connects.
//!
//! [`BrokerFactory::variables`]: crate::BrokerFactory::variables

use std::collections::BTreeMap;
use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use crate::error::{BrokerError, Error};

/// Everything the framework reads from configuration: [`Config::from_env`], or in code
/// `Config::default().with_backend("redis").with_source("order-service")`.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// The name of a linked broker: `memory`, `disabled`, or one a broker crate registers
    /// (`kafka`, `rabbitmq`, `redis`) (`MESSAGING_BACKEND`).
    pub backend: String,
    /// Service name written into envelopes and DLQ records (`MESSAGING_SOURCE`).
    pub source: String,
    /// The brokers' own settings, by variable name (`REDIS_URL`, `KAFKA_CONFIG_ACKS` …),
    /// read by the broker crates, never by core. From the environment: every variable with a
    /// prefix a linked broker registered. In code: [`Config::setting`]; a variable not set
    /// here takes the broker's default.
    pub settings: Settings,
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
    /// How often a running consumer reads its lag, and when `/health` calls it lagging
    /// (`MESSAGING_LAG_INTERVAL`, `MESSAGING_LAG_ALERT`).
    pub lag: crate::lag::LagConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: "memory".to_owned(),
            source: default_source(),
            settings: Settings::default(),
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
            lag: Default::default(),
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

    /// Reads from any key-value source (the environment, a test's map): `get` looks one
    /// variable up, `all` lists every one, where the variables known by a prefix are found
    /// (`MESSAGING_TOPIC_<NAME>`, and each linked broker's, kept in [`Config::settings`]).
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
        let prefixes = crate::broker::setting_prefixes();
        c.idempotency = crate::idempotency::IdempotencyConfig::from_lookup(set)?;
        c.lag = crate::lag::LagConfig::from_lookup(set)?;
        for (key, value) in all {
            // Passed on unread: the broker crate that registered the prefix parses it.
            if prefixes.iter().any(|p| key.starts_with(p)) {
                c.settings.set(key, value);
                continue;
            }
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
            }
        }
        Ok(c)
    }

    /// With the broker setting `name` (a variable name, e.g. `REDIS_URL`) set to `value`, as
    /// if it were in the environment.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.set(name, value);
        self
    }

    /// With this broker ([`Config::backend`]).
    pub fn with_backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = backend.into();
        self
    }

    /// With this service name ([`Config::source`]).
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// With these connection retries ([`Config::connect_max_retries`],
    /// [`Config::connect_retry_delay`], [`Config::connect_cooldown`]).
    pub fn with_connect_retries(mut self, max: u32, delay: Duration, cooldown: Duration) -> Self {
        self.connect_max_retries = max;
        self.connect_retry_delay = delay;
        self.connect_cooldown = cooldown;
        self
    }

    /// With this concurrency per group ([`Config::concurrency`]).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// With this message size limit ([`Config::max_message_size`]).
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// With this dead-letter topic for every handler that names none ([`Config::dlq_topic`]).
    pub fn with_dlq_topic(mut self, topic: impl Into<String>) -> Self {
        self.dlq_topic = Some(topic.into());
        self
    }

    /// With this readiness stall limit ([`Config::health_stall_after`]).
    pub fn with_health_stall_after(mut self, after: Duration) -> Self {
        self.health_stall_after = after;
        self
    }

    /// With this replay limit ([`Config::dlq_max_replays`]).
    pub fn with_dlq_max_replays(mut self, replays: u32) -> Self {
        self.dlq_max_replays = replays;
        self
    }

    /// With `topic` published and consumed as `actual` in this environment (as
    /// `MESSAGING_TOPIC_<NAME>=actual` does; see [`Config::resolve_topic`]).
    pub fn with_topic_override(mut self, topic: &str, actual: impl Into<String>) -> Self {
        self.topic_overrides
            .insert(topic_variable_name(topic), actual.into());
        self
    }

    /// With this `#[event]` queue capacity ([`Config::event_queue`]).
    pub fn with_event_queue(mut self, capacity: usize) -> Self {
        self.event_queue = capacity;
        self
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
        self.topic_overrides
            .get(&topic_variable_name(topic))
            .map_or(topic, String::as_str)
    }
}

/// `topic` as the NAME of `MESSAGING_TOPIC_<NAME>`: capitals, every character but letters
/// and digits made `_`.
fn topic_variable_name(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("backend", &self.backend)
            .field("source", &self.source)
            .field("settings", &self.settings)
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
            .field("lag", &self.lag)
            .finish()
    }
}

/// The settings of the broker crates, by variable name (`REDIS_URL`,
/// `KAFKA_CONFIG_SESSION_TIMEOUT_MS` …). Core stores them and never reads them: each broker
/// crate parses its own, and reports a bad one as [`BrokerError::Config`] naming the
/// variable. `Debug` masks secrets (names with `PASSWORD`, `SECRET`, `KEY` or `TOKEN`, and the
/// password of any URL).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Settings(BTreeMap<String, String>);

impl Settings {
    /// Sets `name` to `value` (replacing an earlier value).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// The value of `name` as given (possibly empty); `None` when unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of `name`, `None` when unset or blank: for a variable whose empty value
    /// means "not set" (an optional credential).
    pub fn get_non_blank(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    /// The value of `name`, `None` when unset (the broker's default then applies). Set but
    /// blank is a mistake rather than a request for the default: a [`BrokerError::Config`]
    /// of `broker` naming the variable. For addresses and URLs.
    pub fn get_required(
        &self,
        broker: &'static str,
        name: &str,
    ) -> Result<Option<&str>, BrokerError> {
        match self.get(name) {
            Some(v) if v.trim().is_empty() => Err(BrokerError::config(
                broker,
                name,
                "is set but empty; unset it for the default or give an address",
            )),
            other => Ok(other),
        }
    }

    /// Every setting whose name starts with `prefix`, as (the rest of its name, value), in
    /// name order. An empty rest (the prefix itself as a name) is left out.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map_while(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
            .filter(|(rest, _)| !rest.is_empty())
    }

    /// Every setting, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Settings {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Whether a setting of this name holds a secret, for `Debug` output.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "KEY", "TOKEN"]
        .iter()
        .any(|s| name.contains(s))
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret_name(k) {
                    "***".to_owned()
                } else {
                    mask_url(v)
                };
                (k, shown)
            }))
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
        assert!(c.settings.is_empty());
        assert_eq!(c.connect_max_retries, 10);
        assert_eq!(c.connect_retry_delay, Duration::from_secs(3));
        assert_eq!(c.connect_cooldown, Duration::from_secs(30));
    }

    // A broker crate's registration, as the real ones make: its prefix is captured.
    inventory::submit! {
        crate::BrokerFactory::new("config-test", |_config| {
            Box::pin(async { Err(BrokerError::config("config-test", "CONFIGTEST_URL", "unused")) })
        })
        .variables(&["CONFIGTEST_"])
    }

    #[test]
    fn environment_overrides_and_broker_settings() {
        let c = from(&[
            ("MESSAGING_BACKEND", "Config-Test"),
            ("MESSAGING_CONNECT_RETRY_DELAY", "250ms"),
            ("CONFIGTEST_URL", ""),
            ("CONFIGTEST_OPTION_A", "1"),
            ("CONFIGTESTS", "not the prefix"),
            ("UNRELATED_SECRET", "never captured"),
        ])
        .unwrap();
        assert_eq!(c.backend, "config-test");
        assert_eq!(c.connect_retry_delay, Duration::from_millis(250));
        // Passed on as given, empty included: the broker decides what empty means.
        assert_eq!(c.settings.get("CONFIGTEST_URL"), Some(""));
        let e = c.settings.get_required("config-test", "CONFIGTEST_URL");
        assert!(
            matches!(&e, Err(BrokerError::Config { variable, .. }) if variable == "CONFIGTEST_URL"),
            "{e:?}"
        );
        assert_eq!(c.settings.get_non_blank("CONFIGTEST_URL"), None);
        assert_eq!(
            c.settings
                .with_prefix("CONFIGTEST_OPTION_")
                .collect::<Vec<_>>(),
            [("A", "1")]
        );
        assert_eq!(c.settings.get("CONFIGTESTS"), None);
        assert_eq!(c.settings.get("UNRELATED_SECRET"), None);
    }

    #[test]
    fn settings_by_prefix_stop_at_the_prefix() {
        let s: Settings = [
            ("A_X", "1"),
            ("A_Y", "2"),
            ("A_", "3"),
            ("AB_Z", "4"),
            ("B", "5"),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            s.with_prefix("A_").collect::<Vec<_>>(),
            [("X", "1"), ("Y", "2")]
        );
        assert_eq!(s.with_prefix("C").count(), 0);
        let in_code = Config::default().setting("A_X", "9");
        assert_eq!(in_code.settings.get("A_X"), Some("9"));
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
            mask_url("db://:pw@localhost:6379/0"),
            "db://:***@localhost:6379/0"
        );
        // A bare password, as some URL schemes carry.
        assert_eq!(mask_url("dbs://pw@h/0"), "dbs://***@h/0");
        assert_eq!(mask_url("db://localhost:6379"), "db://localhost:6379");
        let c = Config::default()
            .setting("CONFIGTEST_API_SECRET", "s3cret")
            .setting("CONFIGTEST_URL", "amqp://u:p4ss@h/")
            .setting("CONFIGTEST_CONFIG_SASL_PASSWORD", "x9")
            .setting("CONFIGTEST_API_KEY", "k3y");
        let shown = format!("{c:?}");
        for secret in ["s3cret", "p4ss", "x9", "k3y"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }
}
