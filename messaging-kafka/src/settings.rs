//! From the framework's [`Config`] to librdkafka properties: bootstrap servers, Confluent
//! Cloud credentials, pass-through properties (for every client, or for the producer, the
//! consumers or the admin client alone), and this crate's own `messaging.*` options.
//! `Debug` masks every secret, so settings can be logged.
//!
//! | variable | what |
//! |---|---|
//! | `KAFKA_BOOTSTRAP_SERVERS` | `bootstrap.servers` (default `localhost:9092`) |
//! | `KAFKA_API_KEY` / `KAFKA_API_SECRET` | `SASL_SSL` + `PLAIN` with these credentials |
//! | `KAFKA_CONFIG_<NAME>` | a property of every client (`…_SESSION_TIMEOUT_MS` → `session.timeout.ms`), or a `messaging.*` option |
//! | `KAFKA_PRODUCER_CONFIG_<NAME>` | a property of the producer only; wins over `KAFKA_CONFIG_<NAME>` there |
//! | `KAFKA_CONSUMER_CONFIG_<NAME>` | a property of the consumers only (group members, and the reader of `dlq list`/`replay`) |
//! | `KAFKA_ADMIN_CONFIG_<NAME>` | a property of the admin client only (creates topics) |
//! | `KAFKA_REPLY_TOPIC` | the topic where this service's replies arrive (request-reply); default `<MESSAGING_SOURCE>.replies`, the source's characters that Kafka refuses in a topic name replaced by `_` |
//!
//! librdkafka warns about a property a client kind does not use (`linger.ms` on a consumer,
//! `session.timeout.ms` on a producer); the scoped variables give each client only its own.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use messaging_core::{BindingOf, Config};
use rdkafka::ClientConfig;
use serde_json::{Value, json};

use crate::error::KafkaSetupError;

/// Partitions of the topics this crate creates (`messaging.topic.partitions`).
pub const PARTITIONS: &str = "messaging.topic.partitions";
/// Their replication factor, `-1` for the broker's default (`messaging.topic.replication.factor`).
pub const REPLICATION_FACTOR: &str = "messaging.topic.replication.factor";
/// How long `subscribe` waits for the group to assign partitions (`messaging.join.timeout.ms`).
pub const JOIN_TIMEOUT_MS: &str = "messaging.join.timeout.ms";
/// How long connecting waits for the cluster's metadata (`messaging.connect.timeout.ms`).
pub const CONNECT_TIMEOUT_MS: &str = "messaging.connect.timeout.ms";

/// The bootstrap servers when `KAFKA_BOOTSTRAP_SERVERS` is not set (DESIGN §5).
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "localhost:9092";

const BOOTSTRAP_SERVERS_VARIABLE: &str = "KAFKA_BOOTSTRAP_SERVERS";
const API_KEY_VARIABLE: &str = "KAFKA_API_KEY";
const API_SECRET_VARIABLE: &str = "KAFKA_API_SECRET";
/// The variable naming this service's reply topic.
pub(crate) const REPLY_TOPIC_VARIABLE: &str = "KAFKA_REPLY_TOPIC";
/// The prefix of the properties of every client.
const CONFIG_PREFIX: &str = "KAFKA_CONFIG_";

const DEFAULT_PARTITIONS: i32 = 3;
const DEFAULT_REPLICATION_FACTOR: i32 = -1;
const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds of librdkafka client this crate makes, each of which can be given properties of
/// its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Client {
    /// The producer (publishing, and the metadata requests made on its connection).
    Producer,
    /// A consumer: a group member, or the reader of `dlq list` and `dlq replay`.
    Consumer,
    /// The admin client, which creates topics.
    Admin,
}

impl Client {
    /// Every kind.
    pub const ALL: [Client; 3] = [Client::Producer, Client::Consumer, Client::Admin];

    /// The prefix of the variables that set this client's properties alone
    /// (`KAFKA_PRODUCER_CONFIG_`).
    pub fn variable_prefix(self) -> &'static str {
        match self {
            Client::Producer => "KAFKA_PRODUCER_CONFIG_",
            Client::Consumer => "KAFKA_CONSUMER_CONFIG_",
            Client::Admin => "KAFKA_ADMIN_CONFIG_",
        }
    }

    fn index(self) -> usize {
        match self {
            Client::Producer => 0,
            Client::Consumer => 1,
            Client::Admin => 2,
        }
    }
}

/// Everything a Kafka client of this crate is built from.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// librdkafka properties common to the producer, the consumers and the admin client.
    properties: BTreeMap<String, String>,
    /// Properties of one kind of client alone, by [`Client::index`]; they win over
    /// `properties` there.
    scoped: [BTreeMap<String, String>; 3],
    /// Partitions of topics this crate creates.
    pub partitions: i32,
    /// Replication factor of topics this crate creates (`-1`: the broker's default).
    pub replication_factor: i32,
    /// How long `subscribe` waits for its first partition assignment.
    pub join_timeout: Duration,
    /// How long connecting waits for the cluster to answer.
    pub connect_timeout: Duration,
    /// Where this service's replies arrive: a valid topic name ([`KafkaSettings::set_reply_topic`]).
    reply_topic: String,
}

impl KafkaSettings {
    /// Settings for these bootstrap servers with librdkafka's defaults; the reply topic is
    /// that of the service named as [`Config::default`] names it (the binary's name).
    pub fn new(bootstrap_servers: &str) -> Self {
        let mut properties = BTreeMap::new();
        properties.insert("bootstrap.servers".to_owned(), bootstrap_servers.to_owned());
        Self {
            properties,
            scoped: Default::default(),
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reply_topic: default_reply_topic(&Config::default().source),
        }
    }

    /// The mapping of DESIGN §5, from [`Config::settings`]: `KAFKA_BOOTSTRAP_SERVERS`;
    /// `KAFKA_API_KEY`/`KAFKA_API_SECRET` switch to `SASL_SSL` with `PLAIN` (Confluent
    /// Cloud); then every `KAFKA_CONFIG_<NAME>` property, which may override the former; then
    /// the properties of one client, `KAFKA_PRODUCER_CONFIG_<NAME>`,
    /// `KAFKA_CONSUMER_CONFIG_<NAME>` and `KAFKA_ADMIN_CONFIG_<NAME>`, which win over
    /// `KAFKA_CONFIG_<NAME>` for that client; `KAFKA_REPLY_TOPIC`, else the reply topic of
    /// [`Config::source`] ([`default_reply_topic`]). An error names the variable to fix.
    pub fn from_config(config: &Config) -> Result<Self, KafkaSetupError> {
        let variables = &config.settings;
        let servers = match variables.get(BOOTSTRAP_SERVERS_VARIABLE) {
            Some(v) if v.trim().is_empty() => {
                return Err(KafkaSetupError::Empty {
                    variable: BOOTSTRAP_SERVERS_VARIABLE,
                });
            }
            Some(v) => v,
            None => DEFAULT_BOOTSTRAP_SERVERS,
        };
        let mut settings = Self::new(servers);
        match (
            variables.get_non_blank(API_KEY_VARIABLE),
            variables.get_non_blank(API_SECRET_VARIABLE),
        ) {
            (Some(key), Some(secret)) => {
                settings.set("security.protocol", "SASL_SSL")?;
                settings.set("sasl.mechanisms", "PLAIN")?;
                settings.set("sasl.username", key)?;
                settings.set("sasl.password", secret)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(KafkaSetupError::HalfCredentials {
                    missing: API_SECRET_VARIABLE,
                });
            }
            (None, Some(_)) => {
                return Err(KafkaSetupError::HalfCredentials {
                    missing: API_KEY_VARIABLE,
                });
            }
        }
        for (name, value) in variables.with_prefix(CONFIG_PREFIX) {
            settings.set(&property_of(name), value)?;
        }
        for client in Client::ALL {
            for (name, value) in variables.with_prefix(client.variable_prefix()) {
                settings.set_for(client, &property_of(name), value)?;
            }
        }
        // Blank is unset, as for the credentials: a deployment template's empty variable
        // asks for the default.
        match variables.get_non_blank(REPLY_TOPIC_VARIABLE) {
            Some(topic) => {
                settings.set_reply_topic(topic)?;
            }
            None => settings.reply_topic = default_reply_topic(&config.source),
        }
        Ok(settings)
    }

    /// Sets a librdkafka property of every client, or one of this crate's `messaging.*`
    /// options.
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

    /// Sets a librdkafka property of `client` alone; it wins over a property of every client
    /// of that name. This crate's `messaging.*` options apply to the whole broker: they are
    /// set with [`KafkaSettings::set`].
    pub fn set_for(
        &mut self,
        client: Client,
        name: &str,
        value: &str,
    ) -> Result<&mut Self, KafkaSetupError> {
        if name.starts_with("messaging.") {
            return Err(KafkaSetupError::NotPerClient {
                name: name.to_owned(),
                client,
            });
        }
        self.scoped[client.index()].insert(name.to_owned(), value.to_owned());
        Ok(self)
    }

    /// The topic where this service's replies arrive (request-reply).
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// Sets the reply topic; an error if Kafka would refuse the name.
    pub fn set_reply_topic(&mut self, topic: &str) -> Result<&mut Self, KafkaSetupError> {
        check_topic_name(topic).map_err(|reason| KafkaSetupError::InvalidReplyTopic {
            value: topic.to_owned(),
            reason,
        })?;
        topic.clone_into(&mut self.reply_topic);
        Ok(self)
    }

    /// A librdkafka property of every client, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// The librdkafka property `client` gets: its own, else the one of every client.
    pub fn get_for(&self, client: Client, name: &str) -> Option<&str> {
        self.scoped[client.index()]
            .get(name)
            .or_else(|| self.properties.get(name))
            .map(String::as_str)
    }

    /// The names of the librdkafka properties `client` gets, longest first (so that a name
    /// found in a message is not the tail of a longer one that is there too).
    pub(crate) fn property_names(&self, client: Client) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self
            .properties
            .keys()
            .chain(self.scoped[client.index()].keys())
            .map(String::as_str)
            .collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        names.dedup();
        names.into_iter()
    }

    /// The variable `client`'s property `property` was read from: the client's own
    /// (`KAFKA_CONSUMER_CONFIG_SESSION_TIMEOUT_MS`) when it has one, else the one of every
    /// client (`KAFKA_CONFIG_SESSION_TIMEOUT_MS`, `KAFKA_BOOTSTRAP_SERVERS`).
    pub(crate) fn variable_of(&self, client: Client, property: &str) -> String {
        if self.scoped[client.index()].contains_key(property) {
            variable_name(client.variable_prefix(), property)
        } else {
            variable_of(property)
        }
    }

    /// The bootstrap servers, for messages.
    pub fn bootstrap_servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or_default()
    }

    /// The configuration of a `client`: `defaults`, then the properties of every client,
    /// then `client`'s own, then `forced` (what a client kind cannot work without, such as
    /// `enable.auto.offset.store=false`).
    pub(crate) fn client_config(
        &self,
        client: Client,
        defaults: &[(&str, &str)],
        forced: &[(&str, &str)],
    ) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (name, value) in defaults {
            config.set(*name, *value);
        }
        for (name, value) in self.properties.iter().chain(&self.scoped[client.index()]) {
            config.set(name, value);
        }
        for (name, value) in forced {
            config.set(*name, *value);
        }
        config
    }
}

/// The longest topic name Kafka takes.
const TOPIC_NAME_MAX: usize = 249;

/// The suffix of a default reply topic.
const REPLY_SUFFIX: &str = ".replies";

/// Whether `c` may appear in a Kafka topic name.
fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Why Kafka would refuse `name` as a topic name, if it would.
fn check_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("a topic name cannot be empty")
    } else if name == "." || name == ".." {
        Err("`.` and `..` are not topic names")
    } else if name.len() > TOPIC_NAME_MAX {
        Err("a topic name has at most 249 characters")
    } else if !name.chars().all(is_topic_char) {
        Err("a topic name has only ASCII letters, digits, `.`, `_` and `-`")
    } else {
        Ok(())
    }
}

/// The reply topic of the service `source` when `KAFKA_REPLY_TOPIC` is not set:
/// `<source>.replies`, with each character a topic name cannot hold replaced by `_` and the
/// source shortened to fit Kafka's 249 characters (`messaging.replies` for no source).
pub fn default_reply_topic(source: &str) -> String {
    let source = source.trim();
    if source.is_empty() {
        return format!("messaging{REPLY_SUFFIX}");
    }
    let mut topic: String = source
        .chars()
        .map(|c| if is_topic_char(c) { c } else { '_' })
        .take(TOPIC_NAME_MAX - REPLY_SUFFIX.len())
        .collect();
    topic.push_str(REPLY_SUFFIX);
    topic
}

/// The property a variable's name stands for (`SESSION_TIMEOUT_MS` → `session.timeout.ms`).
fn property_of(variable_suffix: &str) -> String {
    variable_suffix.to_ascii_lowercase().replace('_', ".")
}

pub(crate) fn variable_name(prefix: &str, property: &str) -> String {
    format!(
        "{prefix}{}",
        property.to_ascii_uppercase().replace('.', "_")
    )
}

/// The environment variable a property of every client (or `messaging.*` option) is read
/// from (`session.timeout.ms` → `KAFKA_CONFIG_SESSION_TIMEOUT_MS`).
pub(crate) fn variable_of(property: &str) -> String {
    match property {
        "bootstrap.servers" => BOOTSTRAP_SERVERS_VARIABLE.to_owned(),
        _ => variable_name(CONFIG_PREFIX, property),
    }
}

/// What the connection loop names as the cluster: the bootstrap servers (they hold no
/// secret), as configured even when another setting is wrong.
pub(crate) fn target(config: &Config) -> String {
    match KafkaSettings::from_config(config) {
        Ok(settings) => settings.bootstrap_servers().to_owned(),
        Err(_) => config
            .settings
            .get_non_blank(BOOTSTRAP_SERVERS_VARIABLE)
            .unwrap_or(DEFAULT_BOOTSTRAP_SERVERS)
            .to_owned(),
    }
}

/// What the AsyncAPI document (`consumer asyncapi`) says of Kafka (`BrokerFactory::bindings`):
/// a channel is its topic; a receive operation reads in its consumer group (the group is the
/// group id as given: this crate does not prefix it).
pub(crate) fn asyncapi_bindings(_config: &Config, of: BindingOf<'_>) -> Option<Value> {
    let kafka = match of {
        BindingOf::Channel { topic, .. } => json!({"topic": topic}),
        BindingOf::Receive { group, .. } => {
            json!({"groupId": {"type": "string", "enum": [group]}})
        }
        _ => return None,
    };
    let mut kafka = kafka;
    kafka["bindingVersion"] = json!(ASYNCAPI_KAFKA_BINDINGS);
    Some(json!({ "kafka": kafka }))
}

/// The version of the AsyncAPI Kafka bindings written.
const ASYNCAPI_KAFKA_BINDINGS: &str = "0.5.0";

/// Whether a property holds a secret (or, for `sasl.username`, an API key).
pub(crate) fn is_secret(name: &str) -> bool {
    name == "sasl.username"
        || ["password", "secret", "key"]
            .iter()
            .any(|s| name.contains(s))
}

fn masked(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
        .collect()
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("KafkaSettings");
        debug.field("properties", &masked(&self.properties));
        for client in Client::ALL {
            let own = &self.scoped[client.index()];
            if !own.is_empty() {
                let field = match client {
                    Client::Producer => "producer",
                    Client::Consumer => "consumer",
                    Client::Admin => "admin",
                };
                debug.field(field, &masked(own));
            }
        }
        debug
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("join_timeout", &self.join_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reply_topic", &self.reply_topic)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api: Option<(&str, &str)>, properties: &[(&str, &str)]) -> Config {
        let mut config =
            Config::default().setting(BOOTSTRAP_SERVERS_VARIABLE, "pkc-1.example.invalid:9092");
        if let Some((key, secret)) = api {
            config = config
                .setting(API_KEY_VARIABLE, key)
                .setting(API_SECRET_VARIABLE, secret);
        }
        for (property, value) in properties {
            config = config.setting(variable_of(property), *value);
        }
        config
    }

    fn from(variables: &[(&str, &str)]) -> Result<KafkaSettings, KafkaSetupError> {
        let config = variables
            .iter()
            .fold(Config::default(), |c, (k, v)| c.setting(*k, *v));
        KafkaSettings::from_config(&config)
    }

    fn variable(error: KafkaSetupError) -> String {
        match error.into_broker_error() {
            messaging_core::BrokerError::Config { variable, .. } => variable,
            other => panic!("not a configuration error: {other}"),
        }
    }

    #[test]
    fn asyncapi_bindings_name_the_topic_and_the_group() {
        let config = Config::default();
        let channel = BindingOf::Channel {
            topic: "orders.created",
            kept: false,
        };
        let kafka = &asyncapi_bindings(&config, channel).unwrap()["kafka"];
        assert_eq!(kafka["topic"], "orders.created");
        assert_eq!(kafka["bindingVersion"], "0.5.0");
        let receive = BindingOf::Receive {
            topic: "orders.created",
            group: "payments",
        };
        let kafka = &asyncapi_bindings(&config, receive).unwrap()["kafka"];
        assert_eq!(kafka["groupId"]["enum"][0], "payments");
        let send = BindingOf::Send {
            topic: "orders.created",
        };
        assert_eq!(asyncapi_bindings(&config, send), None);
    }

    #[test]
    fn defaults_follow_design() {
        let s = from(&[]).unwrap();
        assert_eq!(s.bootstrap_servers(), "localhost:9092");
        assert_eq!(target(&Config::default()), "localhost:9092");
    }

    #[test]
    fn plain_bootstrap_servers_need_nothing_else() {
        let s = KafkaSettings::from_config(&config(None, &[])).unwrap();
        assert_eq!(s.bootstrap_servers(), "pkc-1.example.invalid:9092");
        assert_eq!(s.get("security.protocol"), None);
        assert_eq!((s.partitions, s.replication_factor), (3, -1));
        assert_eq!(target(&config(None, &[])), "pkc-1.example.invalid:9092");
    }

    #[test]
    fn empty_bootstrap_servers_are_an_error_naming_the_variable() {
        for empty in ["", "  "] {
            let e = from(&[(BOOTSTRAP_SERVERS_VARIABLE, empty)]).unwrap_err();
            assert!(e.to_string().contains("empty"), "{e}");
            assert_eq!(variable(e), BOOTSTRAP_SERVERS_VARIABLE);
        }
        // An empty credential is an unset one, as before.
        let s = from(&[(API_KEY_VARIABLE, ""), (API_SECRET_VARIABLE, "")]).unwrap();
        assert_eq!(s.get("security.protocol"), None);
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
            Client::Consumer,
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
    fn each_client_gets_its_own_properties_and_those_of_every_client() {
        let s = from(&[
            ("KAFKA_CONFIG_CLIENT_ID", "orders"),
            ("KAFKA_CONFIG_STATISTICS_INTERVAL_MS", "1000"),
            ("KAFKA_PRODUCER_CONFIG_LINGER_MS", "5"),
            ("KAFKA_CONSUMER_CONFIG_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_CONSUMER_CONFIG_STATISTICS_INTERVAL_MS", "500"),
            ("KAFKA_ADMIN_CONFIG_SOCKET_TIMEOUT_MS", "9000"),
        ])
        .unwrap();
        let config = |client| s.client_config(client, &[("linger.ms", "1")], &[]);
        let (producer, consumer, admin) = (
            config(Client::Producer),
            config(Client::Consumer),
            config(Client::Admin),
        );
        for c in [&producer, &consumer, &admin] {
            assert_eq!(c.get("client.id"), Some("orders"), "KAFKA_CONFIG_ sets all");
            assert_eq!(c.get("bootstrap.servers"), Some("localhost:9092"));
        }
        assert_eq!(producer.get("linger.ms"), Some("5"));
        assert_eq!(consumer.get("linger.ms"), Some("1"), "only the default");
        assert_eq!(admin.get("linger.ms"), Some("1"), "only the default");
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(admin.get("session.timeout.ms"), None);
        assert_eq!(admin.get("socket.timeout.ms"), Some("9000"));
        assert_eq!(producer.get("socket.timeout.ms"), None);
        // The client's own wins over the one of every client, for that client only.
        assert_eq!(consumer.get("statistics.interval.ms"), Some("500"));
        assert_eq!(producer.get("statistics.interval.ms"), Some("1000"));
        assert_eq!(
            s.get_for(Client::Consumer, "statistics.interval.ms"),
            Some("500")
        );
        assert_eq!(
            s.get_for(Client::Admin, "statistics.interval.ms"),
            Some("1000")
        );
        assert_eq!(s.get("session.timeout.ms"), None);
        // Errors name the variable the property came from.
        assert_eq!(
            s.variable_of(Client::Consumer, "statistics.interval.ms"),
            "KAFKA_CONSUMER_CONFIG_STATISTICS_INTERVAL_MS"
        );
        assert_eq!(
            s.variable_of(Client::Producer, "statistics.interval.ms"),
            "KAFKA_CONFIG_STATISTICS_INTERVAL_MS"
        );
        assert_eq!(
            s.variable_of(Client::Producer, "linger.ms"),
            "KAFKA_PRODUCER_CONFIG_LINGER_MS"
        );
        assert_eq!(
            s.variable_of(Client::Admin, "bootstrap.servers"),
            "KAFKA_BOOTSTRAP_SERVERS"
        );
    }

    #[test]
    fn a_scoped_variable_may_not_hold_an_option_of_the_whole_broker() {
        let e = from(&[("KAFKA_CONSUMER_CONFIG_MESSAGING_JOIN_TIMEOUT_MS", "1000")]).unwrap_err();
        assert!(e.to_string().contains("KAFKA_CONFIG_"), "{e}");
        assert_eq!(
            variable(e),
            "KAFKA_CONSUMER_CONFIG_MESSAGING_JOIN_TIMEOUT_MS"
        );
    }

    #[test]
    fn bad_options_are_named() {
        let e = KafkaSettings::from_config(&config(None, &[(PARTITIONS, "0")])).unwrap_err();
        assert!(e.to_string().contains(PARTITIONS), "{e}");
        assert_eq!(variable(e), "KAFKA_CONFIG_MESSAGING_TOPIC_PARTITIONS");
        let e = KafkaSettings::from_config(&config(None, &[("messaging.topic.partition", "3")]))
            .unwrap_err();
        assert!(e.to_string().contains("messaging.topic.partition"), "{e}");
        let half = config(None, &[]).setting(API_KEY_VARIABLE, "k");
        let e = KafkaSettings::from_config(&half).unwrap_err();
        assert!(e.to_string().contains("KAFKA_API_SECRET"), "{e}");
        assert_eq!(variable(e), "KAFKA_API_SECRET");
    }

    #[test]
    fn the_reply_topic_defaults_to_the_source_made_a_legal_name() {
        let of = |source: &str| {
            KafkaSettings::from_config(&config(None, &[]).with_source(source))
                .unwrap()
                .reply_topic()
                .to_owned()
        };
        assert_eq!(of("order-service"), "order-service.replies");
        assert_eq!(of("orders svc/v2 é"), "orders_svc_v2__.replies");
        assert_eq!(of("  "), "messaging.replies");
        let long = of(&"s".repeat(300));
        assert_eq!(long.len(), 249);
        assert!(long.ends_with("s.replies"), "{long}");
        for topic in [of("x"), long, default_reply_topic("a:b")] {
            assert_eq!(check_topic_name(&topic), Ok(()), "{topic}");
        }
        // Blank is unset.
        let blank = KafkaSettings::from_config(
            &config(None, &[])
                .with_source("billing")
                .setting(REPLY_TOPIC_VARIABLE, " "),
        )
        .unwrap();
        assert_eq!(blank.reply_topic(), "billing.replies");
    }

    #[test]
    fn a_reply_topic_kafka_would_refuse_is_an_error_naming_the_variable() {
        let set = from(&[(REPLY_TOPIC_VARIABLE, "billing.inbox")]).unwrap();
        assert_eq!(set.reply_topic(), "billing.inbox");
        let too_long = "r".repeat(250);
        for (bad, why) in [
            ("billing replies", "only ASCII letters"),
            ("billing/replies", "only ASCII letters"),
            ("..", "not topic names"),
            (too_long.as_str(), "at most 249"),
        ] {
            let e = from(&[(REPLY_TOPIC_VARIABLE, bad)]).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(why) && text.contains(bad), "{text}");
            assert_eq!(variable(e), REPLY_TOPIC_VARIABLE);
        }
        let mut s = KafkaSettings::new("localhost:9092");
        assert!(s.set_reply_topic("").is_err());
        s.set_reply_topic("own.replies").unwrap();
        assert_eq!(s.reply_topic(), "own.replies");
    }

    #[test]
    fn key_and_secret_never_appear_in_debug_output() {
        let c = config(
            Some(("KEY123", "SECRET456")),
            &[("ssl.key.password", "PW789")],
        )
        .setting("KAFKA_PRODUCER_CONFIG_SASL_PASSWORD", "PW000");
        let s = KafkaSettings::from_config(&c).unwrap();
        for shown in [format!("{s:?}"), format!("{s:#?}"), format!("{c:?}")] {
            for secret in ["KEY123", "SECRET456", "PW789", "PW000"] {
                assert!(!shown.contains(secret), "{secret} leaked: {shown}");
            }
            assert!(shown.contains("pkc-1.example.invalid:9092"), "{shown}");
        }
    }
}
