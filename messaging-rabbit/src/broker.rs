//! [`RabbitBroker`]: the core's `Broker` on RabbitMQ.

use std::sync::Arc;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use messaging_core::{
    BoxFuture, Broker, BrokerError, Config, Consumer, Message, OutgoingMessage, Subscription,
};

use crate::NAME;
use crate::consumer::{Plan, RabbitConsumer};
use crate::error::RabbitError;
use crate::headers;
use crate::options::RabbitOptions;
use crate::publisher::Publisher;
use crate::topology;

/// A RabbitMQ broker. Clones share the publishing connection; every consumer has its own.
#[derive(Clone)]
pub struct RabbitBroker {
    options: Arc<RabbitOptions>,
    publisher: Arc<Publisher>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RabbitBroker {
    /// Connects once with these options and declares the exchange; fails when RabbitMQ
    /// cannot be reached (the runtime's connect loop retries).
    pub async fn connect(options: RabbitOptions) -> Result<Self, BrokerError> {
        let options = Arc::new(options);
        let publisher = Publisher::connect(Arc::clone(&options))
            .await
            .map_err(|e| e.into_broker("connect"))?;
        Ok(Self {
            options,
            publisher: Arc::new(publisher),
        })
    }

    /// Connects to `url` with the default exchange (`messaging`) and settings.
    pub async fn connect_url(url: &str) -> Result<Self, BrokerError> {
        Self::connect(RabbitOptions::new(url)).await
    }

    /// Connects as configured: `Config::rabbitmq_url`, the retry settings, and the exchange
    /// from the `RABBITMQ_EXCHANGE` environment variable when set.
    pub async fn from_config(config: &Config) -> Result<Self, BrokerError> {
        let mut options = RabbitOptions::from_config(config);
        if let Ok(exchange) = std::env::var("RABBITMQ_EXCHANGE")
            && !exchange.trim().is_empty()
        {
            options = options.exchange(exchange.trim());
        }
        Self::connect(options).await
    }

    /// As the trait object the runtime takes.
    pub fn into_dyn(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }

    /// The options it was made with.
    pub fn options(&self) -> &RabbitOptions {
        &self.options
    }

    /// The queue holding `group`'s messages (`<exchange>.group.<group>`).
    pub fn group_queue(&self, group: &str) -> Result<String, BrokerError> {
        topology::group_queue(&self.options.exchange, group)
            .map(Into::into)
            .map_err(|e| e.into_broker("name queue"))
    }

    /// The queue keeping `topic` once declared with `declare_topics`
    /// (`<exchange>.topic.<topic>`).
    pub fn topic_queue(&self, topic: &str) -> Result<String, BrokerError> {
        topology::topic_queue(&self.options.exchange, topic)
            .map(Into::into)
            .map_err(|e| e.into_broker("name queue"))
    }

    /// Deletes a queue and the messages in it; returns how many there were. For tests and
    /// operators retiring a group.
    pub async fn delete_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        let run = async {
            let name = lapin::types::ShortString::try_new(queue).map_err(|_| {
                RabbitError::InvalidName {
                    what: "queue",
                    name: queue.to_owned(),
                    reason: "longer than 255 bytes",
                }
            })?;
            let channel = self.publisher.side_channel().await?;
            let count = channel
                .queue_delete(name, QueueDeleteOptions::default())
                .await?;
            let _ = channel.close(200, "done".into()).await;
            Ok::<_, RabbitError>(count)
        };
        run.await.map_err(|e| e.into_broker("delete queue"))
    }

    /// Reads the kept queue of `topic` with `basic.get` and hands everything back by closing
    /// the channel unacknowledged (so the messages return to the queue, marked redelivered).
    async fn browse_kept(&self, topic: &str, limit: usize) -> Result<Vec<Message>, RabbitError> {
        topology::routing_key(topic)?;
        let queue = topology::topic_queue(&self.options.exchange, topic)?;
        let channel = self.publisher.side_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.clone(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {}
            // NOT_FOUND closes the side channel: never declared means nothing kept.
            Err(error) if error.is_amqp_soft_error() => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        }
        let names = messaging_core::TopicNames::new([topic]);
        let mut messages = Vec::new();
        while messages.len() < limit {
            match channel
                .basic_get(queue.clone(), BasicGetOptions::default())
                .await?
            {
                // Its acker is dropped unused: closing the channel returns the message.
                Some(got) => messages.push(headers::to_message(got.delivery, &names).0),
                None => break,
            }
        }
        if let Err(error) = channel.close(200, "browsed".into()).await {
            tracing::debug!(%error, "closing the browsing channel failed; its connection returns the messages");
        }
        Ok(messages)
    }
}

impl Broker for RabbitBroker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.publisher
                .publish(&message)
                .await
                .map_err(|e| e.into_broker("publish"))
        })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async move {
            let started = async {
                let plan = Plan::new(Arc::clone(&self.options), subscription)?;
                RabbitConsumer::start(plan).await
            };
            match started.await {
                Ok(consumer) => Ok(Box::new(consumer) as Box<dyn Consumer>),
                Err(error) => Err(error.into_broker("subscribe")),
            }
        })
    }

    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.publisher
                .declare_topics(topics)
                .await
                .map_err(|e| e.into_broker("declare topics"))
        })
    }

    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        Box::pin(async move {
            self.browse_kept(topic, limit)
                .await
                .map_err(|e| e.into_broker("browse"))
        })
    }
}
