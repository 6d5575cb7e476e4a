//! Reading what waits in a topic without consuming it (`consumer dlq list`, `consumer dlq
//! replay`): a throwaway consumer, assigned every partition from the replay group's committed
//! offset (else the beginning) up to the partition's end, that never joins a group. Nothing
//! waits on a rebalance, so a read takes a few requests.
//!
//! A replay ([`KafkaSnapshot::settle`]) passes over what it re-published by committing, for
//! [`REPLAY_GROUP`], the offset after the last record it replayed in each partition; what it
//! did not replay before that offset is first published again to the same topic, so that it
//! stays listed. Kafka accepts the commits of a group no member ever joined (a "simple
//! consumer"'s), as Tansu does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use messaging_core::{
    BoxFuture, Broker as _, BrokerError, DlqSnapshot, Message, OutgoingMessage, Position,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaBroker;
use crate::convert::to_message;
use crate::error::{KafkaSetupError, connection, creation_error, from_kafka, operation};
use crate::quiet::Quiet;
use crate::settings::{Client, KafkaSettings};

/// The group whose committed offsets mark where the waiting records of a topic begin.
pub const REPLAY_GROUP: &str = "messaging-dlq-replay";

const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer of [`REPLAY_GROUP`] that never subscribes: it reads by assignment and commits
/// explicit offsets only.
fn replay_consumer(settings: &KafkaSettings) -> Result<BaseConsumer<Quiet>, BrokerError> {
    settings
        .client_config(
            Client::Consumer,
            &[],
            &[
                ("group.id", REPLAY_GROUP),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
            ],
        )
        .create_with_context(Quiet)
        .map_err(|e| creation_error("create consumer", e, settings, Client::Consumer))
}

/// Up to `limit` of the messages waiting in `topic` (from the replay group's committed
/// offset on), ordered by partition and offset; none if the topic does not exist. Each
/// partition is read up to the end the broker reports when the read gets there (its first
/// end-of-partition event), so what is published later is not read. Blocking: run it off
/// the async threads.
///
/// The end comes from the fetch responses rather than a `ListOffsets` request made first:
/// Tansu answers the latter with one past the last batch's first offset, so a partition
/// holding one batch of 9 records ends at 1 there.
pub(crate) fn browse(
    settings: &KafkaSettings,
    topic: &str,
    limit: usize,
) -> Result<Vec<Message>, BrokerError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let fail = |e| from_kafka("browse", e);
    let consumer = replay_consumer(settings)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(fail)?;
    let Some(found) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        // An unknown topic: nothing was ever written there.
        return Ok(Vec::new());
    };
    let mut partitions = TopicPartitionList::new();
    for partition in found.partitions() {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(partitions, TIMEOUT)
        .map_err(fail)?;
    let mut assignment = TopicPartitionList::new();
    // Per partition, how many more records to take.
    let mut wanted: HashMap<i32, usize> = HashMap::new();
    for partition in found.partitions() {
        let start = match committed
            .find_partition(topic, partition.id())
            .map(|e| e.offset())
        {
            // One deleted by retention since resets to the earliest (`auto.offset.reset`).
            Some(offset @ Offset::Offset(_)) => offset,
            _ => Offset::Beginning,
        };
        assignment
            .add_partition_offset(topic, partition.id(), start)
            .map_err(fail)?;
        wanted.insert(partition.id(), limit);
    }
    consumer.assign(&assignment).map_err(fail)?;
    let mut deadline = Instant::now() + TIMEOUT;
    let mut messages = Vec::new();
    let names = messaging_core::TopicNames::new([topic]);
    while !wanted.is_empty() {
        if Instant::now() > deadline {
            return Err(connection(KafkaSetupError::Unreachable {
                servers: settings.bootstrap_servers().to_owned(),
                timeout: TIMEOUT,
            }));
        }
        let received = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(received)) => received,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                wanted.remove(&partition);
                continue;
            }
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => return Err(fail(error)),
            // Logged by the context; librdkafka retries by itself, within the timeout.
            Some(Err(_)) => continue,
        };
        let message = to_message(&received, &names);
        let Position::Partition { partition, .. } = message.position else {
            continue;
        };
        let Some(left) = wanted.get_mut(&partition) else {
            // Published after its partition's end was reached.
            continue;
        };
        messages.push(message);
        deadline = Instant::now() + TIMEOUT;
        *left -= 1;
        if *left == 0 {
            wanted.remove(&partition);
        }
    }
    messages.sort_by_key(|m| match m.position {
        Position::Partition { partition, offset } => (partition, offset),
        _ => (i32::MAX, i64::MAX),
    });
    messages.truncate(limit);
    Ok(messages)
}

/// The records a DLQ replay took ([`crate::KafkaBroker`]'s `dlq_snapshot`).
pub(crate) struct KafkaSnapshot {
    broker: KafkaBroker,
    topic: String,
    records: Vec<Message>,
}

impl KafkaSnapshot {
    pub(crate) fn new(broker: KafkaBroker, topic: String, records: Vec<Message>) -> Self {
        Self {
            broker,
            topic,
            records,
        }
    }

    /// What settling with `replayed` does: per partition, the offset to commit (just past
    /// the last record replayed there), and the records not replayed before it, which must
    /// be published again to stay listed. A record after the last one replayed of its
    /// partition stays where it is.
    fn plan(&self, replayed: &[usize]) -> (BTreeMap<i32, i64>, Vec<&Message>) {
        let replayed: HashSet<usize> = replayed.iter().copied().collect();
        let mut commit: BTreeMap<i32, i64> = BTreeMap::new();
        for index in &replayed {
            if let Some(&Position::Partition { partition, offset }) =
                self.records.get(*index).map(|m| &m.position)
            {
                let next = commit.entry(partition).or_insert(offset + 1);
                *next = (*next).max(offset + 1);
            }
        }
        let kept = self
            .records
            .iter()
            .enumerate()
            .filter(|(index, _)| !replayed.contains(index))
            .filter(|(_, m)| match m.position {
                Position::Partition { partition, offset } => {
                    commit.get(&partition).is_some_and(|end| offset < *end)
                }
                _ => false,
            })
            .map(|(_, m)| m)
            .collect();
        (commit, kept)
    }
}

impl DlqSnapshot for KafkaSnapshot {
    fn records(&self) -> &[Message] {
        &self.records
    }

    fn settle(
        self: Box<Self>,
        replayed: Vec<usize>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async move {
            let (commit, kept) = self.plan(&replayed);
            if commit.is_empty() {
                return Ok(());
            }
            // Copies first, each confirmed: were the commit to come first and a copy then be
            // lost, the record would be gone.
            for message in kept {
                let mut copy = OutgoingMessage::new(self.topic.clone(), message.payload.clone())
                    .with_headers(message.headers.clone());
                copy.key = message.key.clone();
                self.broker.publish(copy).await?;
            }
            let settings = self.broker.settings().clone();
            let topic = self.topic.clone();
            tokio::task::spawn_blocking(move || commit_replayed(&settings, &topic, &commit))
                .await
                .map_err(|e| operation("settle replay", e))?
        })
    }
}

/// Commits, for [`REPLAY_GROUP`], where the waiting records of `topic` now begin. Blocking.
fn commit_replayed(
    settings: &KafkaSettings,
    topic: &str,
    commit: &BTreeMap<i32, i64>,
) -> Result<(), BrokerError> {
    let fail = |e| from_kafka("settle replay", e);
    let consumer = replay_consumer(settings)?;
    let mut offsets = TopicPartitionList::with_capacity(commit.len());
    for (partition, next) in commit {
        offsets
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .map_err(fail)?;
    }
    consumer.commit(&offsets, CommitMode::Sync).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Message {
        Message::new("t.dlq", "").with_position(Position::Partition { partition, offset })
    }

    #[tokio::test]
    async fn settling_commits_past_the_last_replayed_record_and_copies_what_it_passes_over() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        let broker = KafkaBroker::connect(&cluster.bootstrap_servers())
            .await
            .expect("connected");
        let records = vec![at(0, 3), at(0, 4), at(0, 5), at(0, 6), at(1, 0), at(2, 7)];
        let snapshot = KafkaSnapshot::new(broker, "t.dlq".to_owned(), records);
        let (commit, kept) = snapshot.plan(&[1, 2, 5]);
        assert_eq!(commit, BTreeMap::from([(0, 6), (2, 8)]));
        let kept: Vec<&Position> = kept.iter().map(|m| &m.position).collect();
        assert_eq!(
            kept,
            [&Position::Partition {
                partition: 0,
                offset: 3
            }],
            "offset 6 of partition 0 and partition 1 stay where they are"
        );
        let (commit, kept) = snapshot.plan(&[]);
        assert!(
            commit.is_empty() && kept.is_empty(),
            "nothing replayed, nothing moves"
        );
    }
}
