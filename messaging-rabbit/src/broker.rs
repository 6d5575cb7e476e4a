//! [`RabbitBroker`]: the core's `Broker` on RabbitMQ.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use messaging_core::reply::ReplyInbox;
use messaging_core::{
    BoxFuture, Broker, BrokerError, Config, Consumer, DlqSnapshot, LagRow, Message,
    OutgoingMessage, Subscription,
};

use crate::NAME;
use crate::consumer::{Plan, RabbitConsumer};
use crate::error::RabbitError;
use crate::headers;
use crate::options::RabbitOptions;
use crate::publisher::Publisher;
use crate::{lag, replies, topology};

/// A RabbitMQ broker. Clones share the publishing connection; every consumer has its own.
#[derive(Clone)]
pub struct RabbitBroker {
    options: Arc<RabbitOptions>,
    publisher: Arc<Publisher>,
    /// This process's consumers, which alone know what they hold unacknowledged.
    members: Arc<lag::Members>,
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
    pub async fn connect(mut options: RabbitOptions) -> Result<Self, BrokerError> {
        options.consumer_timeout = options
            .resolved_consumer_timeout()
            .map_err(|e| RabbitError::Config(e).into_broker("connect"))?;
        let options = Arc::new(options);
        let publisher = Publisher::connect(Arc::clone(&options))
            .await
            .map_err(|e| e.into_broker("connect"))?;
        Ok(Self {
            options,
            publisher: Arc::new(publisher),
            members: Arc::default(),
        })
    }

    /// Connects to `url` with the default exchange (`messaging`) and settings.
    pub async fn connect_url(url: &str) -> Result<Self, BrokerError> {
        Self::connect(RabbitOptions::new(url)).await
    }

    /// Connects as configured: `RABBITMQ_URL` and `RABBITMQ_EXCHANGE` from
    /// [`Config::settings`], and the retry settings (see [`RabbitOptions::from_config`]).
    pub async fn from_config(config: &Config) -> Result<Self, BrokerError> {
        Self::connect(RabbitOptions::from_config(config)?).await
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

    /// A fresh channel on the publishing connection, the kept queue of `topic` and how many
    /// messages wait in it now; `None` when the queue was never declared (nothing kept).
    async fn open_kept(
        &self,
        topic: &str,
    ) -> Result<Option<(Channel, ShortString, usize)>, RabbitError> {
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
            Ok(declared) => {
                let waiting = usize::try_from(declared.message_count()).unwrap_or(usize::MAX);
                Ok(Some((channel, queue, waiting)))
            }
            // NOT_FOUND closes the side channel: never declared means nothing kept. Any other
            // refusal (no permission on the queue) is an error, not an empty DLQ.
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Takes up to `limit` messages of the kept queue of `topic` with `basic.get`, leaving
    /// them unacknowledged on `channel`: the broker holds them for this channel until they
    /// are acknowledged (gone), rejected or the channel closes (both put them back).
    async fn take_kept(
        channel: &Channel,
        queue: &ShortString,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<(Message, lapin::Acker)>, RabbitError> {
        let names = messaging_core::TopicNames::new([topic]);
        let mut taken = Vec::new();
        while taken.len() < limit {
            match channel
                .basic_get(queue.clone(), BasicGetOptions::default())
                .await?
            {
                Some(got) => taken.push(headers::to_message(got.delivery, &names)),
                None => break,
            }
        }
        Ok(taken)
    }

    /// Reads the kept queue of `topic` with `basic.get` and hands everything back by closing
    /// the channel unacknowledged (so the messages return to the queue, marked redelivered).
    async fn browse_kept(&self, topic: &str, limit: usize) -> Result<Vec<Message>, RabbitError> {
        let Some((channel, queue, _)) = self.open_kept(topic).await? else {
            return Ok(Vec::new());
        };
        // The ackers are dropped unused: closing the channel returns the messages.
        let messages = Self::take_kept(&channel, &queue, topic, limit)
            .await?
            .into_iter()
            .map(|(message, _)| message)
            .collect();
        if let Err(error) = channel.close(200, "browsed".into()).await {
            tracing::debug!(%error, "closing the browsing channel failed; its connection returns the messages");
        }
        Ok(messages)
    }

    /// The records waiting in the kept queue of `topic` when this starts (its message count
    /// then bounds how many are taken, so records dead-lettered meanwhile are left for the
    /// next replay), at most `limit`, held unacknowledged on a channel of their own.
    async fn snapshot_kept(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<RabbitSnapshot, RabbitError> {
        let Some((channel, queue, waiting)) = self.open_kept(topic).await? else {
            return Ok(RabbitSnapshot::default());
        };
        let (records, ackers) = Self::take_kept(&channel, &queue, topic, limit.min(waiting))
            .await?
            .into_iter()
            .unzip();
        Ok(RabbitSnapshot {
            channel: Some(channel),
            records,
            ackers,
        })
    }
}

pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// The records a `dlq replay` took, held unacknowledged on their own channel: `settle`
/// acknowledges the replayed ones (they leave the queue) and rejects the others back into
/// it. Dropped unsettled (a dry run, an error), the channel closes as lapin drops it, and
/// the broker puts every record back where it was.
#[derive(Default)]
struct RabbitSnapshot {
    /// `None` when the queue was never declared.
    channel: Option<Channel>,
    records: Vec<Message>,
    /// One per record, same order.
    ackers: Vec<lapin::Acker>,
}

impl DlqSnapshot for RabbitSnapshot {
    fn records(&self) -> &[Message] {
        &self.records
    }

    fn settle(
        mut self: Box<Self>,
        replayed: Vec<usize>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        let channel = self.channel.take();
        let ackers = std::mem::take(&mut self.ackers);
        Box::pin(async move {
            let Some(channel) = channel else {
                return Ok(());
            };
            let run = async {
                let replayed: HashSet<usize> = replayed.into_iter().collect();
                let mut unremoved = 0;
                for (index, acker) in ackers.iter().enumerate() {
                    if replayed.contains(&index) {
                        if !acker.ack(BasicAckOptions::default()).await? {
                            unremoved += 1;
                        }
                    } else {
                        // Back where it was: a record that was not re-published (truncated,
                        // not a record, refused) is never deleted. A `false` means the
                        // channel is closed, which puts it back as well.
                        let back = BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        };
                        acker.nack(back).await?;
                    }
                }
                // The broker answers the close after it has handled the acknowledgements.
                channel.close(200, "replay settled".into()).await?;
                match unremoved {
                    0 => Ok(()),
                    _ => Err(RabbitError::NotSettled { unremoved }),
                }
            };
            // On an error the channel is dropped, which returns what is still held.
            run.await
                .map_err(|e: RabbitError| e.into_broker("settle dlq replay"))
        })
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

    /// An inbox on RabbitMQ's direct reply-to, on a channel of the publishing connection;
    /// requests go out on that channel (see `replies`).
    fn open_replies(&self) -> BoxFuture<'_, Result<ReplyInbox, BrokerError>> {
        Box::pin(async move {
            replies::open(&self.publisher, &self.options.exchange)
                .await
                .map_err(|e| e.into_broker("open replies"))
        })
    }

    /// To the default exchange, with the routing key the request's `reply_to` named; a
    /// requester that is gone is not an error (see `Publisher::publish_reply`).
    fn publish_reply(&self, reply: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.publisher
                .publish_reply(&reply)
                .await
                .map_err(|e| e.into_broker("publish reply"))
        })
    }

    /// The server's `consumer_timeout` as configured (`?consumer_timeout=` in the URL,
    /// 30 min by default): the runtime refuses handlers whose retries could reach it.
    fn max_unacknowledged(&self) -> Option<Duration> {
        self.options.consumer_timeout
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
                Ok(consumer) => {
                    self.members
                        .add(consumer.queue().as_str(), consumer.pending());
                    Ok(Box::new(consumer) as Box<dyn Consumer>)
                }
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

    /// The group queue's ready count, and what this process's consumers hold (see
    /// `crate::lag`).
    fn lag<'a>(
        &'a self,
        group: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<LagRow>, BrokerError>> {
        Box::pin(async move {
            lag::lag(
                &self.publisher,
                &self.members,
                &self.options.exchange,
                group,
                topics,
            )
            .await
            .map_err(|e| e.into_broker("lag"))
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

    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        Box::pin(async move {
            match self.snapshot_kept(topic, limit).await {
                Ok(snapshot) => Ok(Box::new(snapshot) as Box<dyn DlqSnapshot>),
                Err(error) => Err(error.into_broker("dlq snapshot")),
            }
        })
    }
}
