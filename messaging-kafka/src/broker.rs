//! [`KafkaBroker`]: the idempotent producer, topic creation, consumers on demand, and the
//! reply inbox of request-reply ([`crate::replies`]).

use std::sync::Arc;
use std::time::Duration;

use messaging_core::reply::ReplyInbox;
use messaging_core::{
    BoxFuture, Broker, BrokerError, Config, Consumer, DlqSnapshot, LagRow, Message,
    OutgoingMessage, StartFrom, Subscription,
};
use rdkafka::producer::Producer as _;

use crate::browse::KafkaSnapshot;
use crate::consumer::{GroupConsumer, GroupContext, KafkaConsumer, Limits, REVOKE_DRAIN_TIMEOUT};
use crate::error::{KafkaSetupError, NAME, connection, creation_error, from_kafka, operation};
use crate::publish::{Publisher, Refused};
use crate::settings::{Client, KafkaSettings};
use crate::topics::{Purpose, Topics};

/// The producer's defaults, which `KAFKA_CONFIG_*` and `KAFKA_PRODUCER_CONFIG_*` properties
/// may override.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// How long a publish waits when librdkafka's queue is full before trying again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(100);

/// A Kafka cluster reached through librdkafka. Clones share the producer.
#[derive(Clone)]
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: KafkaSettings,
    publisher: Arc<Publisher>,
    topics: Topics,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Connects to `bootstrap_servers` (`host:port,…`) with librdkafka's defaults.
    pub async fn connect(bootstrap_servers: &str) -> Result<Self, BrokerError> {
        Self::connect_with(KafkaSettings::new(bootstrap_servers)).await
    }

    /// Connects to `bootstrap_servers` with these librdkafka properties (or `messaging.*`
    /// options of [`crate::settings`]) on top.
    pub async fn connect_with_properties<'a>(
        bootstrap_servers: &str,
        properties: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, BrokerError> {
        let mut settings = KafkaSettings::new(bootstrap_servers);
        for (name, value) in properties {
            settings
                .set(name, value)
                .map_err(KafkaSetupError::into_broker_error)?;
        }
        Self::connect_with(settings).await
    }

    /// Connects as the framework's configuration says (DESIGN §5).
    pub async fn from_config(config: &Config) -> Result<Self, BrokerError> {
        let settings =
            KafkaSettings::from_config(config).map_err(KafkaSetupError::into_broker_error)?;
        Self::connect_with(settings).await
    }

    /// Connects with these settings; fails when the cluster does not answer within
    /// `messaging.connect.timeout.ms` (10 s by default), and at once, with
    /// [`BrokerError::Config`] naming the variable, on a property librdkafka refuses.
    pub async fn connect_with(settings: KafkaSettings) -> Result<Self, BrokerError> {
        // Creating clients starts their threads and waits for them, and the probe blocks:
        // none of it on a Tokio worker.
        let (settings, publisher, topics) = tokio::task::spawn_blocking(move || {
            let publisher =
                Publisher::new(settings.client_config(Client::Producer, PRODUCER_DEFAULTS, &[]))
                    .map_err(|e| {
                        creation_error("create producer", e, &settings, Client::Producer)
                    })?;
            let servers = settings.bootstrap_servers().to_owned();
            let timeout = settings.connect_timeout;
            if let Err(error) = publisher.producer().client().fetch_metadata(None, timeout) {
                tracing::debug!(%error, "Kafka metadata request failed");
                return Err(connection(KafkaSetupError::Unreachable {
                    servers,
                    timeout,
                }));
            }
            let publisher = Arc::new(publisher);
            let topics = Topics::new(&settings, Arc::clone(&publisher))?;
            Ok((settings, publisher, topics))
        })
        .await
        .map_err(|e| operation("connect", e))??;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                publisher,
                topics,
            }),
        })
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &KafkaSettings {
        &self.inner.settings
    }

    /// As the trait object the runtime takes.
    pub fn into_dyn(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }

    /// Publishes `message`; a topic not published to yet is created first if missing, as
    /// `purpose` needs it.
    fn publish_as(
        &self,
        message: OutgoingMessage,
        purpose: Purpose,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        // Handed to librdkafka now when it can be, so that the future does not carry the
        // message while it waits for the report.
        match self.inner.publisher.send(&message) {
            Ok(delivery) => {
                Box::pin(async { delivery.await.map_err(|e| from_kafka("publish", e)) })
            }
            Err(Refused::Failed(error)) => {
                Box::pin(std::future::ready(Err(from_kafka("publish", error))))
            }
            Err(Refused::NewTopic | Refused::QueueFull) => {
                Box::pin(self.publish_slowly(message, purpose))
            }
        }
    }

    /// Publishes a message to a topic not published to yet, or when librdkafka's queue
    /// was full: the slow way of [`Broker::publish`], which awaits in between.
    async fn publish_slowly(
        &self,
        message: OutgoingMessage,
        purpose: Purpose,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        loop {
            match inner.publisher.send(&message) {
                Ok(delivery) => return delivery.await.map_err(|e| from_kafka("publish", e)),
                Err(Refused::NewTopic) => {
                    inner
                        .topics
                        .ensure_for_publish(&message.topic, purpose)
                        .await;
                    inner.publisher.open(&message.topic);
                }
                // Waits for room, as rdkafka's `FutureProducer` does; delivery itself is
                // bounded by librdkafka's `message.timeout.ms`.
                Err(Refused::QueueFull) => tokio::time::sleep(QUEUE_FULL_PAUSE).await,
                Err(Refused::Failed(error)) => return Err(from_kafka("publish", error)),
            }
        }
    }

    async fn subscribe_group(
        &self,
        subscription: Subscription,
    ) -> Result<Box<dyn Consumer>, BrokerError> {
        let consumer = self.group_consumer(&subscription).await?;
        let names = messaging_core::TopicNames::new(&subscription.topics);
        let join_timeout = self.inner.settings.join_timeout;
        let limits = Limits::for_prefetch(subscription.prefetch);
        let consumer = KafkaConsumer::joined(consumer, names, limits, join_timeout).await?;
        Ok(Box::new(consumer))
    }

    /// A consumer of the subscription's group, subscribed to its topics (created first when
    /// missing), not yet joined.
    async fn group_consumer(
        &self,
        subscription: &Subscription,
    ) -> Result<GroupConsumer, BrokerError> {
        let inner = &self.inner;
        inner.topics.ensure(&subscription.topics).await?;
        let reset = match subscription.start {
            StartFrom::Latest => "latest",
            StartFrom::Earliest => "earliest",
        };
        let config = inner.settings.client_config(
            Client::Consumer,
            // Every second rather than librdkafka's 5 s: fewer messages handled again after
            // a crash, for one small request a second.
            &[("auto.commit.interval.ms", "1000")],
            &[
                ("group.id", &subscription.group),
                // Offsets are stored on acknowledgement only, and committed periodically.
                ("enable.auto.commit", "true"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", reset),
            ],
        );
        // A revocation waits for in-flight messages inside the rebalance: at most half of
        // the time the group gives a member between polls.
        let drain_timeout = inner
            .settings
            .get_for(Client::Consumer, "max.poll.interval.ms")
            .and_then(|ms| ms.trim().parse().ok())
            .map_or(REVOKE_DRAIN_TIMEOUT, |ms: u64| {
                REVOKE_DRAIN_TIMEOUT.min(Duration::from_millis(ms / 2))
            });
        let context = GroupContext::new(
            subscription.group.clone(),
            subscription.start,
            subscription.topics.first().cloned().unwrap_or_default(),
            drain_timeout,
        );
        // On a blocking thread: `rd_kafka_subscribe` waits for librdkafka's main thread to
        // serve the request, which can take up to its one-second timer round (a Tokio worker
        // stalled that long), and creating the client starts and awaits its threads.
        let settings = inner.settings.clone();
        let topics = subscription.topics.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: GroupConsumer = config
                .create_with_context(context)
                .map_err(|e| creation_error("create consumer", e, &settings, Client::Consumer))?;
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            rdkafka::consumer::Consumer::subscribe(&consumer, &topics)
                .map_err(|e| from_kafka("subscribe", e))?;
            Ok(consumer)
        })
        .await
        .map_err(|e| operation("subscribe", e))?
    }
}

impl Broker for KafkaBroker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish_as(message, Purpose::Events)
    }

    /// The reply topic of this service (`KAFKA_REPLY_TOPIC`, default `<source>.replies`),
    /// created if missing with bounded retention, read by a consumer of its own from the
    /// end of every partition (see the crate's documentation).
    fn open_replies(&self) -> BoxFuture<'_, Result<ReplyInbox, BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let topic = [inner.settings.reply_topic().to_owned()];
            inner.topics.ensure_as(&topic, Purpose::Replies).await?;
            crate::replies::open(&inner.settings).await
        })
    }

    /// Published as any message, key (the correlation id, which keeps a streamed reply's
    /// chunks on one partition, in order) and headers unchanged; a reply topic missing
    /// (its service never opened it) is created with bounded retention, as its service
    /// would.
    fn publish_reply(&self, reply: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish_as(reply, Purpose::Replies)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(self.subscribe_group(subscription))
    }

    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.inner.topics.ensure(topics))
    }

    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        let settings = self.inner.settings.clone();
        let topic = topic.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || crate::browse::browse(&settings, &topic, limit))
                .await
                .map_err(|e| operation("browse", e))?
        })
    }

    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        let settings = self.inner.settings.clone();
        let owned = topic.to_owned();
        Box::pin(async move {
            // A read by assignment from the replay group's committed offsets: no group join.
            let records = tokio::task::spawn_blocking(move || {
                crate::browse::browse(&settings, &owned, limit)
            })
            .await
            .map_err(|e| operation("dlq replay", e))??;
            let snapshot = KafkaSnapshot::new(self.clone(), topic.to_owned(), records);
            Ok(Box::new(snapshot) as Box<dyn DlqSnapshot>)
        })
    }

    /// High watermark minus committed offset per partition (see `crate::lag`).
    fn lag<'a>(
        &'a self,
        group: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<LagRow>, BrokerError>> {
        let settings = self.inner.settings.clone();
        let (group, topics) = (group.to_owned(), topics.to_vec());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || crate::lag::lag(&settings, &group, &topics))
                .await
                .map_err(|e| operation("lag", e))?
        })
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        let producer = self.inner.publisher.producer();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|e| operation("flush", e))?
                .map_err(|e| from_kafka("flush", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use messaging_core::Position;
    use messaging_core::message::header;
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[tokio::test]
    async fn publishes_wait_for_room_in_a_full_queue_and_none_is_lost() {
        let cluster = MockCluster::new(1).unwrap();
        // The mock cluster cannot create topics.
        cluster.create_topic("orders", 3, 1).unwrap();
        let servers = cluster.bootstrap_servers();
        let broker = KafkaBroker::connect_with_properties(
            &servers,
            [
                ("queue.buffering.max.messages", "2"),
                ("messaging.topic.replication.factor", "1"),
            ],
        )
        .await
        .expect("connected");
        let publishes = (0..40).map(|i| {
            broker.publish(OutgoingMessage::new("orders", format!("{i}")).with_key(format!("{i}")))
        });
        for outcome in futures::future::join_all(publishes).await {
            outcome.expect("published");
        }
        let mut got: Vec<u32> = broker
            .browse("orders", 100)
            .await
            .expect("browsed")
            .iter()
            .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..40).collect::<Vec<_>>());
    }

    /// Up to `n` messages, or what came within `patience`.
    async fn receive(
        consumer: &mut dyn Consumer,
        n: usize,
        patience: Duration,
    ) -> Vec<Arc<Message>> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + patience;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next_batch(n - got.len())).await {
                Ok(batch) => got.extend(batch.expect("fetched")),
                Err(_) => break,
            }
        }
        got
    }

    /// Records handed over by the polling thread arrive whole, and their offsets are
    /// committed on close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_arrive_whole_and_are_committed_on_close() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 2, 1).unwrap();
        let broker = KafkaBroker::connect_with_properties(
            &cluster.bootstrap_servers(),
            [("messaging.topic.replication.factor", "1")],
        )
        .await
        .expect("connected");
        for i in 0..6 {
            broker
                .publish(
                    OutgoingMessage::new("orders", format!("{i}"))
                        .with_key(format!("k{i}"))
                        .with_header(header::TRACE_ID, format!("trace-{i}")),
                )
                .await
                .expect("published");
        }
        let subscription = Subscription {
            group: "billing".to_owned(),
            topics: vec!["orders".to_owned()],
            start: StartFrom::Earliest,
            prefetch: 16,
        };
        let names = messaging_core::TopicNames::new(&subscription.topics);
        let consumer = broker.group_consumer(&subscription).await.expect("created");
        let limits = Limits::for_prefetch(16);
        let mut consumer: Box<dyn Consumer> = Box::new(
            KafkaConsumer::joined(consumer, names, limits, Duration::from_secs(10))
                .await
                .expect("joined"),
        );
        let got = receive(&mut *consumer, 6, Duration::from_secs(20)).await;
        let mut seen: Vec<(String, String, String)> = got
            .iter()
            .map(|m| {
                (
                    String::from_utf8(m.payload.to_vec()).unwrap(),
                    m.key_str().expect("a text key").to_owned(),
                    m.header(header::TRACE_ID).expect("its header").to_owned(),
                )
            })
            .collect();
        seen.sort();
        let expected: Vec<_> = (0..6)
            .map(|i| (format!("{i}"), format!("k{i}"), format!("trace-{i}")))
            .collect();
        assert_eq!(seen, expected);
        let mut positions: Vec<String> = got.iter().map(|m| m.position.to_string()).collect();
        positions.sort();
        positions.dedup();
        assert_eq!(
            positions.len(),
            6,
            "each at a position of its own: {positions:?}"
        );
        let acker = consumer.acker();
        for message in &got {
            acker.ack(message).await.expect("acknowledged");
        }
        consumer.close().await.expect("closed, offsets committed");

        // Committed for each partition: the offset after its last message.
        let mut expected = [0i64; 2];
        for message in &got {
            if let Position::Partition { partition, offset } = message.position {
                expected[partition as usize] = expected[partition as usize].max(offset + 1);
            }
        }
        let reader: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "billing")
            .create()
            .unwrap();
        let mut partitions = rdkafka::TopicPartitionList::new();
        partitions.add_partition("orders", 0);
        partitions.add_partition("orders", 1);
        let committed = rdkafka::consumer::Consumer::committed_offsets(
            &reader,
            partitions,
            Duration::from_secs(10),
        )
        .expect("read the committed offsets");
        let committed: Vec<rdkafka::Offset> = (0..2)
            .map(|p| committed.find_partition("orders", p).unwrap().offset())
            .collect();
        assert_eq!(
            committed,
            expected.map(rdkafka::Offset::Offset),
            "every acknowledged message committed"
        );
    }
}
