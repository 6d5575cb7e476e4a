//! [`CeleryBroker`]: the [`Broker`] of Celery mode.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use messaging_core::message::header;
use messaging_core::{
    BoxFuture, Broker, BrokerError, Consumer, DlqSnapshot, Message, OutgoingMessage, Subscription,
};

use crate::amqp_transport::{AmqpSnapshot, AmqpTransport};
use crate::consumer::{self, Link, Shared};
use crate::error::{CeleryError, NAME};
use crate::protocol;
use crate::redis_transport::RedisTransport;
use crate::settings::{CeleryOptions, Transport};

/// RabbitMQ's default `consumer_timeout`: how long it lets a delivery go unacknowledged.
const RABBITMQ_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Celery mode: publishes tasks that a Python Celery worker runs, and hands the tasks that
/// Python code sends to the framework's handlers. See the crate documentation.
pub struct CeleryBroker {
    shared: Arc<Shared>,
    /// Topics that are no task's but keep messages (dead-letter topics).
    kept: Mutex<BTreeSet<String>>,
    /// Refreshes the liveness key and looks for dead instances (Redis).
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for CeleryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeleryBroker")
            .field(
                "url",
                &messaging_core::config::mask_url(&self.shared.options.url),
            )
            .field("routes", &self.shared.options.routes)
            .finish_non_exhaustive()
    }
}

impl CeleryBroker {
    /// Connects with `options`: the transport its URL's scheme names. A URL that can never
    /// work is a [`BrokerError::Config`] naming `CELERY_BROKER_URL`; a server that does not
    /// answer is a [`BrokerError::Connection`].
    pub async fn connect(options: CeleryOptions) -> Result<Self, BrokerError> {
        let options = Arc::new(options);
        let link = match options.transport()? {
            Transport::Redis => {
                RedisTransport::client(&options.url).map_err(|e| e.into_broker("connect"))?;
                let transport = RedisTransport::connect(&options)
                    .await
                    .map_err(connection_error)?;
                Link::Redis(Arc::new(transport))
            }
            Transport::Amqp => {
                crate::amqp_transport::uri(&options.url).map_err(|e| e.into_broker("connect"))?;
                let transport = AmqpTransport::connect(&options.url, &options.source)
                    .await
                    .map_err(connection_error)?;
                Link::Amqp(Arc::new(transport))
            }
        };
        let shared = Arc::new(Shared::new(link, options));
        let heartbeat = match &shared.link {
            Link::Redis(redis) => {
                match redis.restore_dead().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(tasks = n, "put back the tasks of instances that are gone")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not look for the tasks of instances that are gone")
                    }
                }
                Some(tokio::spawn(heartbeat(
                    Arc::downgrade(&shared),
                    Arc::clone(redis),
                )))
            }
            Link::Amqp(_) => None,
        };
        Ok(Self {
            shared,
            kept: Mutex::new(BTreeSet::new()),
            heartbeat,
        })
    }

    /// As a trait object, the way the runtime holds brokers.
    pub fn into_dyn(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }

    /// The options in force.
    pub fn options(&self) -> &CeleryOptions {
        &self.shared.options
    }

    fn is_kept(&self, topic: &str) -> bool {
        topic.ends_with(".dlq")
            || self
                .kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(topic)
    }

    async fn send(&self, message: OutgoingMessage) -> Result<(), CeleryError> {
        let options = &self.shared.options;
        let event = message.headers.get(header::EVENT_NAME);
        let Some(route) = options.route_of(&message.topic, event) else {
            if self.is_kept(&message.topic) {
                return match &self.shared.link {
                    Link::Redis(redis) => redis.publish_plain(&message).await,
                    Link::Amqp(amqp) => amqp.publish_plain(&message).await,
                };
            }
            return Err(CeleryError::Unmapped {
                topic: message.topic.clone(),
                event: event.map(str::to_owned),
            });
        };
        let task = protocol::encode(&message, route, &options.source)?;
        match &self.shared.link {
            Link::Redis(redis) => redis.publish_task(&route.queue, &task).await,
            Link::Amqp(amqp) => amqp.publish_task(&route.queue, &task).await,
        }
    }
}

fn connection_error(error: CeleryError) -> BrokerError {
    match error {
        CeleryError::Config { .. } => error.into_broker("connect"),
        other => BrokerError::connection(NAME, other),
    }
}

impl Drop for CeleryBroker {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}

/// Keeps this instance alive in Redis's eyes, and every other beat puts back the tasks of
/// instances that are gone.
async fn heartbeat(shared: std::sync::Weak<Shared>, redis: Arc<RedisTransport>) {
    let every = redis.heartbeat_every();
    let mut beat = 0u64;
    loop {
        tokio::time::sleep(every).await;
        let Some(queues) = shared.upgrade().map(|s| s.queues()) else {
            return;
        };
        if let Err(error) = redis.refresh(&queues).await {
            tracing::warn!(%error, "could not refresh this instance's liveness key");
        }
        beat += 1;
        if beat.is_multiple_of(2) {
            match redis.restore_dead().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(tasks = n, "put back the tasks of instances that are gone"),
                Err(error) => {
                    tracing::warn!(%error, "could not look for the tasks of instances that are gone")
                }
            }
        }
    }
}

impl Broker for CeleryBroker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.send(message)
                .await
                .map_err(|e| e.into_broker("publish"))
        })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async move {
            consumer::subscribe(&self.shared, subscription)
                .await
                .map_err(|e| e.into_broker("subscribe"))
        })
    }

    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(topics.iter().cloned());
            match &self.shared.link {
                // A list exists once something is pushed onto it, and is kept.
                Link::Redis(_) => Ok(()),
                Link::Amqp(amqp) => amqp
                    .declare(topics)
                    .await
                    .map_err(|e| e.into_broker("declare topics")),
            }
        })
    }

    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        Box::pin(async move {
            let browsed = match &self.shared.link {
                Link::Redis(redis) => redis.browse(topic, limit).await,
                Link::Amqp(amqp) => amqp.browse(topic, limit).await,
            };
            browsed.map_err(|e| e.into_broker("browse"))
        })
    }

    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        Box::pin(async move {
            let snapshot: Box<dyn DlqSnapshot> = match &self.shared.link {
                Link::Redis(redis) => Box::new(RedisSnapshot {
                    redis: Arc::clone(redis),
                    topic: topic.to_owned(),
                    records: redis
                        .browse(topic, limit)
                        .await
                        .map_err(|e| e.into_broker("dlq snapshot"))?,
                }),
                Link::Amqp(amqp) => Box::new(AmqpDlqSnapshot(
                    amqp.snapshot(topic, limit)
                        .await
                        .map_err(|e| e.into_broker("dlq snapshot"))?,
                )),
            };
            Ok(snapshot)
        })
    }

    fn max_unacknowledged(&self) -> Option<Duration> {
        match self.shared.link {
            Link::Redis(_) => None,
            Link::Amqp(_) => Some(RABBITMQ_CONSUMER_TIMEOUT),
        }
    }
}

/// The records of an AMQP dead-letter queue taken for a replay.
struct AmqpDlqSnapshot(AmqpSnapshot);

impl DlqSnapshot for AmqpDlqSnapshot {
    fn records(&self) -> &[Message] {
        &self.0.records
    }

    fn settle(
        self: Box<Self>,
        replayed: Vec<usize>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async move {
            let replayed = replayed.into_iter().collect();
            // On an error the channel is dropped, which returns what it still holds.
            self.0
                .settle(&replayed)
                .await
                .map_err(|e| e.into_broker("dlq settle"))
        })
    }
}

/// The records of a Redis dead-letter list taken for a replay: the list's first entries
/// when it started. Settling removes the re-published ones (one occurrence each).
struct RedisSnapshot {
    redis: Arc<RedisTransport>,
    topic: String,
    records: Vec<Message>,
}

impl DlqSnapshot for RedisSnapshot {
    fn records(&self) -> &[Message] {
        &self.records
    }

    fn settle(
        self: Box<Self>,
        replayed: Vec<usize>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async move {
            let entries: Vec<Bytes> = replayed
                .into_iter()
                .filter_map(|i| self.records.get(i).map(|m| m.payload.clone()))
                .collect();
            self.redis
                .remove(&self.topic, &entries)
                .await
                .map_err(|e| e.into_broker("dlq settle"))
        })
    }
}
