//! Request-reply's inbox on Kafka: one reply topic per service (`KAFKA_REPLY_TOPIC`, default
//! `<source>.replies`) that every instance of the service reads whole. Replies then reach
//! the instance that asked however many instances share the service, and core keeps those
//! whose correlation id it issued (the id starts with its instance's). No topic is made per
//! request, and nothing grows while an instance idles or after it is gone: the topic is
//! created with bounded retention, and the inbox's consumer is assigned the partitions, never
//! joining a group nor committing, so it leaves no group and no offsets behind.
//!
//! A responder keys each reply with its correlation id, so the chunks of a streamed reply
//! share a partition and arrive in order.
//!
//! [`open`] returns only once the inbox reads at each partition's end, so a reply published
//! after it returned is never missed. The end is asked for first (the high watermark of a
//! `ListOffsets` request), then the inbox reads on to the end the fetch responses report,
//! dropping what it passes: Tansu answers `ListOffsets` with one past the first offset of a
//! partition's last batch, so the rest of that batch, published before, would come next.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use messaging_core::reply::ReplyInbox;
use messaging_core::{BrokerError, Message, TopicNames};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::convert::to_message;
use crate::error::{KafkaSetupError, NAME, connection, creation_error, from_kafka, operation};
use crate::quiet::Quiet;
use crate::settings::{Client, KafkaSettings};

/// The `group.id` of reply inboxes. librdkafka assigns partitions only to a consumer that
/// has one; an inbox neither joins nor commits, so the cluster never holds such a group.
pub const REPLY_INBOX_GROUP: &str = "messaging-reply-inbox";

/// Replies read and not yet taken by the requester; then the inbox stops reading.
const CAPACITY: usize = 1024;

/// How long opening may take: finding the topic, its ends, and reading up to them.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one metadata or `ListOffsets` request waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one poll waits; also how soon a dropped inbox's thread notices.
const POLL_WAIT: Duration = Duration::from_millis(250);

/// How often the inbox looks for partitions added to the topic since it opened (replies
/// keyed there would be missed otherwise).
const NEW_PARTITIONS_EVERY: Duration = Duration::from_secs(60);

/// Pause between lookups of a topic just created, which the metadata may not show yet.
const METADATA_RETRY: Duration = Duration::from_millis(200);

/// Opens an inbox on the reply topic of `settings`, which must exist: a consumer, polled on
/// a thread of its own, that forwards every record to [`ReplyInbox::replies`]. The thread
/// ends when the inbox is dropped, and on a fatal client error, closing the inbox (core then
/// opens another).
pub(crate) async fn open(settings: &KafkaSettings) -> Result<ReplyInbox, BrokerError> {
    let topic = settings.reply_topic().to_owned();
    let config = settings.client_config(
        Client::Consumer,
        &[],
        &[
            ("group.id", REPLY_INBOX_GROUP),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            // Tells when a partition is read to its end (see the module's documentation).
            ("enable.partition.eof", "true"),
            // A position lost to retention (the inbox stalled for an hour) goes on from the end.
            ("auto.offset.reset", "latest"),
        ],
    );
    let (forward, replies) = mpsc::channel(CAPACITY);
    let (opened_tx, opened) = oneshot::channel();
    let settings = settings.clone();
    std::thread::Builder::new()
        .name("kafka-replies".to_owned())
        .spawn({
            let topic = topic.clone();
            // Creating the client and opening block: all of it on this thread, which then
            // holds the client until the end (its destruction blocks too).
            move || match Inbox::open(&config, &settings, topic) {
                Ok(mut inbox) => {
                    if opened_tx.send(Ok(())).is_ok() {
                        inbox.forward(&forward);
                    }
                }
                Err(error) => {
                    let _ = opened_tx.send(Err(error));
                }
            }
        })
        .map_err(|e| operation("open replies", e))?;
    opened.await.map_err(|e| operation("open replies", e))??;
    Ok(ReplyInbox::new(topic, replies))
}

/// An open inbox's client and what it reads.
struct Inbox {
    consumer: BaseConsumer<Quiet>,
    topic: String,
    names: TopicNames,
    /// The partitions assigned.
    partitions: HashSet<i32>,
    /// When partitions were last looked for.
    looked: Instant,
    servers: String,
}

impl Inbox {
    /// Assigns every partition of `topic` at its end and reads up to there. Blocking.
    fn open(
        config: &ClientConfig,
        settings: &KafkaSettings,
        topic: String,
    ) -> Result<Self, BrokerError> {
        let consumer: BaseConsumer<Quiet> = config
            .create_with_context(Quiet)
            .map_err(|e| creation_error("create consumer", e, settings, Client::Consumer))?;
        let deadline = Instant::now() + OPEN_TIMEOUT;
        let fail = |e| from_kafka("open replies", e);
        let partitions = loop {
            match partitions_of(&consumer, &topic) {
                Ok(Some(partitions)) => break partitions,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(METADATA_RETRY),
                Ok(None) => {
                    return Err(operation(
                        "open replies",
                        format!("the reply topic `{topic}` has no partitions"),
                    ));
                }
                Err(error) => return Err(fail(error)),
            }
        };
        let mut ends = TopicPartitionList::with_capacity(partitions.len());
        for partition in &partitions {
            let (_, high) = consumer
                .fetch_watermarks(&topic, *partition, REQUEST_TIMEOUT)
                .map_err(fail)?;
            ends.add_partition_offset(&topic, *partition, Offset::Offset(high))
                .map_err(fail)?;
        }
        // Incremental, so that partitions added later can join without touching these.
        consumer.incremental_assign(&ends).map_err(fail)?;
        let inbox = Self {
            consumer,
            names: TopicNames::new([topic.as_str()]),
            topic,
            partitions,
            looked: Instant::now(),
            servers: settings.bootstrap_servers().to_owned(),
        };
        inbox.catch_up(deadline)?;
        Ok(inbox)
    }

    /// Reads each partition up to the end its fetch responses report, dropping what it
    /// passes: replies published before the inbox opened, none of them its own.
    fn catch_up(&self, deadline: Instant) -> Result<(), BrokerError> {
        let mut behind = self.partitions.clone();
        let mut dropped = 0usize;
        while !behind.is_empty() {
            if Instant::now() >= deadline {
                return Err(connection(KafkaSetupError::Unreachable {
                    servers: self.servers.clone(),
                    timeout: OPEN_TIMEOUT,
                }));
            }
            match self.consumer.poll(POLL_WAIT) {
                Some(Ok(_)) => dropped += 1,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    behind.remove(&partition);
                }
                Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(BrokerError::client_dead(NAME, error));
                }
                // Logged by the context; librdkafka retries by itself, within the deadline.
                Some(Err(_)) | None => {}
            }
        }
        if dropped > 0 {
            tracing::debug!(topic = %self.topic, dropped, "passed over replies published before the inbox opened");
        }
        Ok(())
    }

    /// Forwards every record until the inbox is dropped or the client fails for good.
    fn forward(&mut self, replies: &mpsc::Sender<Message>) {
        while !replies.is_closed() {
            // A panic in a callback (a log subscriber's, say) must not close the inbox.
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                match self.consumer.poll(POLL_WAIT) {
                    Some(Ok(record)) => Ok(Some(to_message(&record, &self.names))),
                    Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => Err(error),
                    // End of a partition, or logged by the context and retried by librdkafka.
                    Some(Err(_)) | None => Ok(None),
                }
            }));
            match polled {
                // Waits while the requester lags: the inbox is not a group member, so no
                // poll interval can expire.
                Ok(Ok(Some(reply))) => {
                    if replies.blocking_send(reply).is_err() {
                        return;
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::error!(topic = %self.topic, %error, "the reply inbox's Kafka client failed for good; closing the inbox");
                    return;
                }
                Err(_) => tracing::error!("a Kafka reply inbox callback panicked; polling on"),
            }
            if self.looked.elapsed() >= NEW_PARTITIONS_EVERY {
                self.assign_new_partitions();
            }
        }
    }

    /// Assigns, from their beginning, the partitions added to the topic since it was last
    /// looked at: everything in them came after.
    fn assign_new_partitions(&mut self) {
        self.looked = Instant::now();
        let partitions = match partitions_of(&self.consumer, &self.topic) {
            Ok(Some(partitions)) => partitions,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(topic = %self.topic, %error, "could not look for new partitions");
                return;
            }
        };
        let mut new = TopicPartitionList::new();
        for partition in partitions.difference(&self.partitions) {
            if let Err(error) = new.add_partition_offset(&self.topic, *partition, Offset::Beginning)
            {
                tracing::warn!(topic = %self.topic, partition, %error, "could not add a new partition");
            }
        }
        if new.count() == 0 {
            return;
        }
        match self.consumer.incremental_assign(&new) {
            Ok(()) => {
                tracing::info!(topic = %self.topic, partitions = new.count(), "reading the reply topic's new partitions");
                self.partitions = partitions;
            }
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "could not read the reply topic's new partitions");
            }
        }
    }
}

/// The partitions of `topic`, or `None` while the cluster does not know it (yet).
fn partitions_of(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
) -> Result<Option<HashSet<i32>>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect()))
}
