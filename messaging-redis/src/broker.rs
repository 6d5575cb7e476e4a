//! [`RedisBroker`]: connecting, publishing (`XADD`), groups (`XGROUP CREATE … MKSTREAM`),
//! declaring dead-letter streams and browsing (`XRANGE`).

use std::sync::Arc;

use messaging_core::broker::{Broker, Consumer, StartFrom, Subscription};
use messaging_core::dlq::DLQ_HEADER;
use messaging_core::{BoxFuture, BrokerError, Message, OutgoingMessage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Value};

use crate::consumer::RedisConsumer;
use crate::entry::{parse_entries, xadd};
use crate::error::{BROKER, RedisBrokerError, broker_error, own_error};
use crate::options::RedisOptions;
use crate::publisher::Publisher;

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

    /// Connects with `options`; query parameters of `url` override them.
    pub async fn connect(url: &str, mut options: RedisOptions) -> Result<Self, BrokerError> {
        let masked_url = messaging_core::config::mask_url(url);
        let client_url = options
            .apply_url(url)
            .map_err(|e| BrokerError::connection(BROKER, e))?;
        let client = match client_url.starts_with("rediss:") {
            true => tls_client(&client_url, &options)?,
            false => Client::open(client_url),
        }
        .map_err(|e| BrokerError::connection(BROKER, e))?;
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

/// The client of a `rediss://` URL: the system's root certificates, or the configured CA
/// and client certificate.
#[cfg(feature = "tls")]
fn tls_client(
    url: &str,
    options: &RedisOptions,
) -> Result<redis::RedisResult<Client>, BrokerError> {
    // Another crate may have installed a provider already; any provider will do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if options.tls_ca.is_none() && options.tls_client.is_none() {
        return Ok(Client::open(url));
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            let error = RedisBrokerError::TlsFile {
                path: path.to_owned(),
                error: e.to_string(),
            };
            BrokerError::connection(BROKER, error)
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
) -> Result<redis::RedisResult<Client>, BrokerError> {
    Err(BrokerError::connection(
        BROKER,
        RedisBrokerError::TlsDisabled,
    ))
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
                create_group(&mut conn, topic, &subscription.group, start)
                    .await
                    .map_err(|e| broker_error("subscribe", e))?;
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
                create_group(&mut conn, topic, KEEP_GROUP, "$")
                    .await
                    .map_err(|e| broker_error("declare_topics", e))?;
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
            if limit == 0 {
                return Ok(Vec::new());
            }
            let reply = redis::cmd("XRANGE")
                .arg(topic)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .query_async::<Value>(&mut self.shared.conn())
                .await
                .map_err(|e| broker_error("browse", e))?;
            let entries = parse_entries("XRANGE", reply).map_err(|e| own_error("browse", e))?;
            let name = messaging_core::TopicName::from(topic);
            Ok(entries
                .into_iter()
                .filter_map(|e| e.into_message(name.clone()))
                .collect())
        })
    }
}
