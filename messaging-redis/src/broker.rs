//! [`RedisBroker`]: connecting, publishing (`XADD`), groups (`XGROUP CREATE … MKSTREAM`),
//! declaring dead-letter streams, browsing (`XRANGE`), DLQ replay snapshots, and the
//! request-reply seam (in `replies`).

use std::sync::Arc;

use messaging_core::broker::{Broker, Consumer, DlqSnapshot, StartFrom, Subscription};
use messaging_core::config::mask_url;
use messaging_core::dlq::DLQ_HEADER;
use messaging_core::reply::ReplyInbox;
use messaging_core::{
    BoxFuture, BrokerError, LagRow, Message, OutgoingMessage, Position, TopicName,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Value};

use crate::consumer::RedisConsumer;
use crate::entry::{parse_entries, xadd};
use crate::error::{BROKER, RedisBrokerError, broker_error, is_wrong_type, own_error};
use crate::options::RedisOptions;
use crate::publisher::Publisher;
use crate::replies;

/// The group that keeps dead-letter streams in existence before their first record.
pub const KEEP_GROUP: &str = "messaging-keep";

/// A Redis Streams broker. Clones share the connection.
#[derive(Clone)]
pub struct RedisBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.shared.masked_url)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

/// What the broker, its consumers and their background tasks share.
pub(crate) struct Shared {
    client: Client,
    /// The multiplexed connection for everything that does not block: publish, acknowledge,
    /// reclaim, groups. It reconnects by itself.
    pub conn: ConnectionManager,
    pub options: RedisOptions,
    /// Pipelines the publishes over `conn`.
    publisher: Publisher,
    masked_url: String,
}

impl Shared {
    /// A connection of its own for one consumer's blocking `XREADGROUP`, which would hold up
    /// every other request on a shared one.
    pub(crate) async fn dedicated_connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connection_timeout))
            .set_response_timeout(Some(self.options.block + self.options.response_timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A handle on the shared connection (cheap: it is reference-counted).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

impl RedisBroker {
    /// Connects to `url` (`redis://[user[:password]@]host[:port][/db]`, `rediss://…` for TLS),
    /// reading this crate's query parameters (see [`RedisOptions`]) from it.
    pub async fn connect_url(url: &str) -> Result<Self, BrokerError> {
        Self::connect(url, RedisOptions::default()).await
    }

    /// Connects with `options`; query parameters of `url` override them. A URL that can never
    /// work (it does not parse, has another scheme, a bad port, database or parameter) is a
    /// [`BrokerError::Config`] naming `REDIS_URL`, found before any connection attempt; a
    /// server that does not answer is a retryable [`BrokerError::Connection`].
    pub async fn connect(url: &str, mut options: RedisOptions) -> Result<Self, BrokerError> {
        let masked_url = mask_url(url);
        let client = open_client(url, &mut options)?;
        // Few quick retries: the caller's connect loop does the long waiting.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_secs(1))
            .set_connection_timeout(Some(options.connection_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| BrokerError::connection(BROKER, e))?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                publisher: Publisher::start(conn.clone()),
                conn,
                options,
                masked_url,
            }),
        })
    }

    /// As a trait object, the way the runtime holds brokers.
    pub fn into_dyn(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }

    /// The options in force.
    pub fn options(&self) -> &RedisOptions {
        &self.shared.options
    }

    /// The shared multiplexed connection, for commands the broker trait does not cover.
    pub fn connection(&self) -> ConnectionManager {
        self.shared.conn()
    }
}

/// The variable a bad URL is reported under (also when the URL was given in code).
pub(crate) const URL_VARIABLE: &str = "REDIS_URL";

/// The URL forms this crate accepts, for error messages.
const URL_FORMS: &str =
    "redis://[user[:password]@]host[:port][/db], rediss://… (TLS) or redis+unix:///path";

/// Reads `url` (applying its parameters to `options`) and builds the client, without
/// connecting: whatever fails here fails the same way on every retry, so it is a
/// configuration error, whose message never shows the password.
pub(crate) fn open_client(url: &str, options: &mut RedisOptions) -> Result<Client, BrokerError> {
    let invalid = |why: &dyn std::fmt::Display| {
        let message = format!("`{}`: {why}", mask_url(url));
        BrokerError::config(BROKER, URL_VARIABLE, hide_password(message, url))
    };
    if url.trim().is_empty() {
        return Err(invalid(&format_args!("empty; expected {URL_FORMS}")));
    }
    let client_url = options.apply_url(url).map_err(|e| match e {
        RedisBrokerError::Url(why) => invalid(&format_args!(
            "does not parse ({why}); expected {URL_FORMS}"
        )),
        other => invalid(&other),
    })?;
    options.check_replies()?;
    let scheme = client_url.split(':').next().unwrap_or_default();
    if matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys")
        && let Ok(parsed) = url::Url::parse(&client_url)
        && let db = parsed.path().trim_matches('/')
        && !db.is_empty()
        && db.parse::<i64>().is_err()
    {
        return Err(invalid(&format_args!(
            "database `{db}` is not a number (the path after the host, as in `/0`)"
        )));
    }
    let client = match scheme {
        "redis" | "valkey" | "unix" | "redis+unix" | "valkey+unix" => Client::open(client_url),
        "rediss" | "valkeys" => tls_client(&client_url, options).map_err(|e| invalid(&e))?,
        other => {
            return Err(invalid(&format_args!(
                "unknown scheme `{other}`; expected {URL_FORMS}"
            )));
        }
    };
    // Nothing is sent yet: the client only reads the URL (host, database, `protocol`).
    client.map_err(|e| invalid(&client_error(&e)))
}

/// What the `redis` client says of a URL it refuses (`Invalid database number -
/// InvalidClientConfig`), without the name of its error kind.
fn client_error(error: &RedisError) -> String {
    let text = error.to_string();
    match text.split_once(" - ") {
        Some((words, kind)) => match kind.split_once(": ") {
            Some((_, detail)) => format!("{words} ({detail})"),
            None => words.to_owned(),
        },
        None => text,
    }
}

/// Replaces the password of `url`, as written and decoded, wherever it shows in `message`.
fn hide_password(message: String, url: &str) -> String {
    let Some(password) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    else {
        return message;
    };
    // `form_urlencoded` would read `+` as a space; a password's `+` is itself.
    let encoded = format!("p={}", password.replace('+', "%2B"));
    let decoded = url::form_urlencoded::parse(encoded.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned());
    let mut message = message.replace(&password, "***");
    if let Some(decoded) = decoded.filter(|d| !d.is_empty()) {
        message = message.replace(&decoded, "***");
    }
    message
}

/// The client of a `rediss://` URL: the system's root certificates, or the configured CA
/// and client certificate.
///
/// rustls takes the crypto provider installed for the process, or else the one its crate
/// features name (ring, which this crate enables). A service that also enables rustls'
/// `aws-lc-rs` feature must install a provider itself (`CryptoProvider::install_default`)
/// before connecting: a library does not pick the process's provider.
#[cfg(feature = "tls")]
fn tls_client(
    url: &str,
    options: &RedisOptions,
) -> Result<redis::RedisResult<Client>, RedisBrokerError> {
    if options.tls_ca.is_none() && options.tls_client.is_none() {
        return Ok(Client::open(url));
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| RedisBrokerError::TlsFile {
            path: path.to_owned(),
            error: e.to_string(),
        })
    };
    let certificates = redis::TlsCertificates {
        client_tls: match &options.tls_client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            None => None,
        },
        root_cert: options.tls_ca.as_deref().map(read).transpose()?,
    };
    Ok(Client::build_with_tls(url, certificates))
}

#[cfg(not(feature = "tls"))]
fn tls_client(
    _url: &str,
    _options: &RedisOptions,
) -> Result<redis::RedisResult<Client>, RedisBrokerError> {
    Err(RedisBrokerError::TlsDisabled)
}

/// `XGROUP CREATE <stream> <group> <start> MKSTREAM`; a group that exists already is fine.
pub(crate) async fn create_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    start: &str,
) -> Result<(), RedisError> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async::<Value>(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        BROKER
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            // Dead-letter records are never trimmed away.
            let maxlen = match message.headers.contains_key(DLQ_HEADER) {
                true => None,
                false => self.shared.options.maxlen,
            };
            let cmd = xadd(&message, maxlen).map_err(|e| own_error("publish", e))?;
            self.shared.publisher.send(cmd).await
        })
    }

    fn open_replies(&self) -> BoxFuture<'_, Result<ReplyInbox, BrokerError>> {
        Box::pin(replies::open(Arc::clone(&self.shared)))
    }

    fn publish_reply(&self, reply: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(replies::publish(&self.shared, reply))
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async move {
            let start = match subscription.start {
                StartFrom::Latest => "$",
                StartFrom::Earliest => "0",
            };
            let mut conn = self.shared.conn();
            for topic in &subscription.topics {
                if let Err(error) = create_group(&mut conn, topic, &subscription.group, start).await
                {
                    // Not a configuration error: the key can be fixed while the process runs,
                    // and the runtime retries this group alone.
                    return Err(match is_wrong_type(&error) {
                        true => not_a_stream(&mut conn, "subscribe", topic).await,
                        false => broker_error("subscribe", error),
                    });
                }
            }
            let consumer = RedisConsumer::new(
                Arc::clone(&self.shared),
                subscription.group,
                subscription.topics,
            );
            Ok(Box::new(consumer) as Box<dyn Consumer>)
        })
    }

    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn();
            for topic in topics {
                // A stream exists only once it has an entry or a group: the placeholder group
                // makes it exist, and Redis never drops a stream's entries by itself.
                match create_group(&mut conn, topic, KEEP_GROUP, "$").await {
                    Ok(()) => {}
                    // A dead-letter key holding something else fails only the records written
                    // to it (they are retried and reported); every other group still starts.
                    Err(error) if is_wrong_type(&error) => {
                        let error = not_a_stream(&mut conn, "declare_topics", topic).await;
                        tracing::error!(%error, "cannot declare a dead-letter stream; records for it fail until the key is fixed");
                    }
                    Err(error) => return Err(broker_error("declare_topics", error)),
                }
            }
            Ok(())
        })
    }

    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn();
            range(&mut conn, "browse", topic, "+", limit).await
        })
    }

    /// `XINFO GROUPS` of each topic (see `crate::lag`).
    fn lag<'a>(
        &'a self,
        group: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<LagRow>, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn();
            crate::lag::lag(&mut conn, group, topics).await
        })
    }

    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn();
            // The last entry now bounds the snapshot: records dead-lettered during the replay
            // (its own copies failing again) wait for the next one.
            let last = redis::cmd("XREVRANGE")
                .arg(topic)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| broker_error("dlq snapshot", e))?;
            let last = parse_entries("XREVRANGE", last)
                .map_err(|e| own_error("dlq snapshot", e))?
                .pop()
                .map(|entry| entry.id);
            let records = match last {
                Some(last) => range(&mut conn, "dlq snapshot", topic, &last, limit).await?,
                None => Vec::new(),
            };
            let snapshot = RedisSnapshot {
                conn,
                topic: topic.to_owned(),
                records,
            };
            Ok(Box::new(snapshot) as Box<dyn DlqSnapshot>)
        })
    }
}

/// `XRANGE <topic> - <last> COUNT <limit>` as messages, exactly as they are delivered.
async fn range(
    conn: &mut ConnectionManager,
    operation: &'static str,
    topic: &str,
    last: &str,
    limit: usize,
) -> Result<Vec<Message>, BrokerError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let reply = redis::cmd("XRANGE")
        .arg(topic)
        .arg("-")
        .arg(last)
        .arg("COUNT")
        .arg(limit)
        .query_async::<Value>(conn)
        .await
        .map_err(|e| broker_error(operation, e))?;
    let entries = parse_entries("XRANGE", reply).map_err(|e| own_error(operation, e))?;
    let name = TopicName::from(topic);
    Ok(entries
        .into_iter()
        .filter_map(|e| e.into_message(name.clone()))
        .collect())
}

/// The error for `key` when a command found it holding something other than a stream: it
/// names the key and what it holds.
pub(crate) async fn not_a_stream(
    conn: &mut ConnectionManager,
    operation: &'static str,
    key: &str,
) -> BrokerError {
    let found = redis::cmd("TYPE")
        .arg(key)
        .query_async::<String>(conn)
        .await
        .unwrap_or_else(|_| "another type".to_owned());
    let error = RedisBrokerError::NotAStream {
        key: key.to_owned(),
        found,
    };
    own_error(operation, error)
}

/// A replay's records, read with `XRANGE` (no group, so nothing waits on a join and no
/// read position is left behind). Settling deletes exactly the re-published entries with
/// `XDEL`; every other entry stays in the stream, listed by `browse`.
struct RedisSnapshot {
    conn: ConnectionManager,
    topic: String,
    records: Vec<Message>,
}

/// Entry ids per `XDEL`, so one settle of a large replay does not make one huge command.
const XDEL_CHUNK: usize = 500;

impl DlqSnapshot for RedisSnapshot {
    fn records(&self) -> &[Message] {
        &self.records
    }

    fn settle(
        self: Box<Self>,
        replayed: Vec<usize>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let Self {
            mut conn,
            topic,
            records,
        } = *self;
        let mut ids: Vec<String> = replayed
            .into_iter()
            .filter_map(|index| match records.get(index).map(|m| &m.position) {
                Some(Position::StreamId(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Box::pin(async move {
            for chunk in ids.chunks(XDEL_CHUNK) {
                redis::cmd("XDEL")
                    .arg(&topic)
                    .arg(chunk)
                    .query_async::<Value>(&mut conn)
                    .await
                    .map_err(|e| broker_error("dlq settle", e))?;
            }
            Ok(())
        })
    }
}
