//! From the framework's [`Config`] to librdkafka properties: bootstrap servers, Confluent
//! Cloud credentials, pass-through properties, and this crate's own `messaging.*` options.
//! `Debug` masks every secret, so settings can be logged.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use messaging_core::Config;
use rdkafka::ClientConfig;

use crate::error::KafkaSetupError;

/// Partitions of the topics this crate creates (`messaging.topic.partitions`).
pub const PARTITIONS: &str = "messaging.topic.partitions";
/// Their replication factor, `-1` for the broker's default (`messaging.topic.replication.factor`).
pub const REPLICATION_FACTOR: &str = "messaging.topic.replication.factor";
/// How long `subscribe` waits for the group to assign partitions (`messaging.join.timeout.ms`).
pub const JOIN_TIMEOUT_MS: &str = "messaging.join.timeout.ms";
/// How long connecting waits for the cluster's metadata (`messaging.connect.timeout.ms`).
pub const CONNECT_TIMEOUT_MS: &str = "messaging.connect.timeout.ms";

const DEFAULT_PARTITIONS: i32 = 3;
const DEFAULT_REPLICATION_FACTOR: i32 = -1;
const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a Kafka client of this crate is built from.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// librdkafka properties common to the producer, the consumers and the admin client.
    properties: BTreeMap<String, String>,
    /// Partitions of topics this crate creates.
    pub partitions: i32,
    /// Replication factor of topics this crate creates (`-1`: the broker's default).
    pub replication_factor: i32,
    /// How long `subscribe` waits for its first partition assignment.
    pub join_timeout: Duration,
    /// How long connecting waits for the cluster to answer.
    pub connect_timeout: Duration,
}

impl KafkaSettings {
    /// Settings for these bootstrap servers with librdkafka's defaults.
    pub fn new(bootstrap_servers: &str) -> Self {
        let mut properties = BTreeMap::new();
        properties.insert("bootstrap.servers".to_owned(), bootstrap_servers.to_owned());
        Self {
            properties,
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The mapping of DESIGN §5: `KAFKA_BOOTSTRAP_SERVERS`; `KAFKA_API_KEY`/`KAFKA_API_SECRET`
    /// switch to `SASL_SSL` with `PLAIN` (Confluent Cloud); then every `KAFKA_CONFIG_<NAME>`
    /// property, which may override the former.
    pub fn from_config(config: &Config) -> Result<Self, KafkaSetupError> {
        let mut settings = Self::new(&config.kafka_bootstrap_servers);
        match (&config.kafka_api_key, &config.kafka_api_secret) {
            (Some(key), Some(secret)) => {
                settings.set("security.protocol", "SASL_SSL")?;
                settings.set("sasl.mechanisms", "PLAIN")?;
                settings.set("sasl.username", key)?;
                settings.set("sasl.password", secret)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(KafkaSetupError::HalfCredentials {
                    missing: "KAFKA_API_SECRET",
                });
            }
            (None, Some(_)) => {
                return Err(KafkaSetupError::HalfCredentials {
                    missing: "KAFKA_API_KEY",
                });
            }
        }
        for (name, value) in &config.kafka_properties {
            settings.set(name, value)?;
        }
        Ok(settings)
    }

    /// Sets a librdkafka property, or one of this crate's `messaging.*` options.
    pub fn set(&mut self, name: &str, value: &str) -> Result<&mut Self, KafkaSetupError> {
        let invalid = || KafkaSetupError::InvalidOption {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        match name {
            PARTITIONS => {
                self.partitions = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(invalid)?;
            }
            REPLICATION_FACTOR => {
                self.replication_factor = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|r| *r == -1 || *r > 0)
                    .ok_or_else(invalid)?;
            }
            JOIN_TIMEOUT_MS => {
                self.join_timeout =
                    Duration::from_millis(value.trim().parse().map_err(|_| invalid())?);
            }
            CONNECT_TIMEOUT_MS => {
                self.connect_timeout =
                    Duration::from_millis(value.trim().parse().map_err(|_| invalid())?);
            }
            other if other.starts_with("messaging.") => {
                return Err(KafkaSetupError::UnknownOption {
                    name: other.to_owned(),
                });
            }
            _ => {
                self.properties.insert(name.to_owned(), value.to_owned());
            }
        }
        Ok(self)
    }

    /// A librdkafka property, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// The names of the librdkafka properties set, longest first (so that a name found in a
    /// message is not the tail of a longer one that is there too).
    pub(crate) fn property_names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.properties.keys().map(String::as_str).collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        names.into_iter()
    }

    /// The bootstrap servers, for messages.
    pub fn bootstrap_servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or_default()
    }

    /// A client configuration: `defaults`, then these properties, then `forced` (what a
    /// client kind cannot work without, such as `enable.auto.offset.store=false`).
    pub(crate) fn client_config(
        &self,
        defaults: &[(&str, &str)],
        forced: &[(&str, &str)],
    ) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (name, value) in defaults {
            config.set(*name, *value);
        }
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        for (name, value) in forced {
            config.set(*name, *value);
        }
        config
    }
}

/// Whether a property holds a secret (or, for `sasl.username`, an API key).
pub(crate) fn is_secret(name: &str) -> bool {
    name == "sasl.username"
        || ["password", "secret", "key"]
            .iter()
            .any(|s| name.contains(s))
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("properties", &shown)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("join_timeout", &self.join_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api: Option<(&str, &str)>, properties: &[(&str, &str)]) -> Config {
        Config {
            kafka_bootstrap_servers: "pkc-1.example.invalid:9092".to_owned(),
            kafka_api_key: api.map(|(k, _)| k.to_owned()),
            kafka_api_secret: api.map(|(_, s)| s.to_owned()),
            kafka_properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Config::default()
        }
    }

    #[test]
    fn plain_bootstrap_servers_need_nothing_else() {
        let s = KafkaSettings::from_config(&config(None, &[])).unwrap();
        assert_eq!(s.bootstrap_servers(), "pkc-1.example.invalid:9092");
        assert_eq!(s.get("security.protocol"), None);
        assert_eq!((s.partitions, s.replication_factor), (3, -1));
    }

    #[test]
    fn api_key_and_secret_switch_to_sasl_ssl_plain() {
        let s = KafkaSettings::from_config(&config(Some(("KEY123", "SECRET456")), &[])).unwrap();
        assert_eq!(s.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(s.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(s.get("sasl.username"), Some("KEY123"));
        assert_eq!(s.get("sasl.password"), Some("SECRET456"));
    }

    #[test]
    fn properties_pass_through_and_win() {
        let s = KafkaSettings::from_config(&config(
            Some(("k", "s")),
            &[
                ("session.timeout.ms", "6000"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                (PARTITIONS, "6"),
                (REPLICATION_FACTOR, "1"),
            ],
        ))
        .unwrap();
        assert_eq!(s.get("session.timeout.ms"), Some("6000"));
        assert_eq!(s.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!((s.partitions, s.replication_factor), (6, 1));
        // This crate's own options never reach librdkafka, which would reject them.
        assert_eq!(s.get(PARTITIONS), None);
        let client = s.client_config(
            &[("session.timeout.ms", "45000"), ("acks", "all")],
            &[("enable.auto.offset.store", "false")],
        );
        assert_eq!(
            client.get("session.timeout.ms"),
            Some("6000"),
            "properties beat defaults"
        );
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(client.get(PARTITIONS), None);
    }

    #[test]
    fn bad_options_are_named() {
        let e = KafkaSettings::from_config(&config(None, &[(PARTITIONS, "0")])).unwrap_err();
        assert!(e.to_string().contains(PARTITIONS), "{e}");
        let e = KafkaSettings::from_config(&config(None, &[("messaging.topic.partition", "3")]))
            .unwrap_err();
        assert!(e.to_string().contains("messaging.topic.partition"), "{e}");
        let mut half = config(Some(("k", "s")), &[]);
        half.kafka_api_secret = None;
        let e = KafkaSettings::from_config(&half).unwrap_err();
        assert!(e.to_string().contains("KAFKA_API_SECRET"), "{e}");
    }

    #[test]
    fn key_and_secret_never_appear_in_debug_output() {
        let c = config(
            Some(("KEY123", "SECRET456")),
            &[("ssl.key.password", "PW789")],
        );
        let s = KafkaSettings::from_config(&c).unwrap();
        for shown in [format!("{s:?}"), format!("{s:#?}"), format!("{c:?}")] {
            for secret in ["KEY123", "SECRET456", "PW789"] {
                assert!(!shown.contains(secret), "{secret} leaked: {shown}");
            }
            assert!(shown.contains("pkc-1.example.invalid:9092"), "{shown}");
        }
    }
}
