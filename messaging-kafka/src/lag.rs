//! Consumer lag on Kafka: per partition of each topic the group reads, the high watermark
//! minus the group's committed offset; with nothing committed, everything the partition
//! holds (high minus low watermark). Read by a throwaway consumer of the group that never
//! subscribes, so it joins nothing and the group's members are not disturbed. Kafka does
//! not say how many fetched messages a member holds unacknowledged: `pending` is `None`.
//!
//! The high watermark is confirmed by a fetch from where `ListOffsets` puts it: Tansu
//! answers `ListOffsets` with one past the first offset of the partition's last batch (see
//! `crate::browse`), so a backlog published in batches would read short by nearly a batch
//! per partition. The fetch reads what lies beyond (at most that batch; nothing on Kafka
//! itself) and the end is one past the last offset it reads.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use messaging_core::{BrokerError, LagRow};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::error::{creation_error, from_kafka};
use crate::quiet::Quiet;
use crate::settings::{Client, KafkaSettings};

const TIMEOUT: Duration = Duration::from_secs(10);

/// How long the fetch confirming the ends may take; past it, `ListOffsets`' ends stand.
const READ_END_TIMEOUT: Duration = Duration::from_secs(5);

/// The lag of `group` on every partition of those of `topics` that exist. Blocking: run it
/// off the async threads.
pub(crate) fn lag(
    settings: &KafkaSettings,
    group: &str,
    topics: &[String],
) -> Result<Vec<LagRow>, BrokerError> {
    let fail = |e| from_kafka("lag", e);
    let consumer: BaseConsumer<Quiet> = settings
        .client_config(
            Client::Consumer,
            &[("fetch.wait.max.ms", "10")],
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
            ],
        )
        .create_with_context(Quiet)
        .map_err(|e| creation_error("create consumer", e, settings, Client::Consumer))?;
    let mut rows = Vec::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(fail)?;
        // A topic that does not exist has nothing to be behind on.
        let Some(found) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            continue;
        };
        let mut partitions = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for partition in found.partitions() {
            partitions.add_partition(topic, partition.id());
            let watermarks = consumer
                .fetch_watermarks(topic, partition.id(), TIMEOUT)
                .map_err(fail)?;
            ends.insert(partition.id(), watermarks);
        }
        if ends.is_empty() {
            continue;
        }
        let committed = consumer
            .committed_offsets(partitions, TIMEOUT)
            .map_err(fail)?;
        read_ends(&consumer, topic, &mut ends)?;
        for (partition, (low, high)) in ends {
            let committed =
                committed
                    .find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    });
            rows.push(LagRow {
                group: group.to_owned(),
                topic: topic.clone(),
                partition: Some(partition),
                lag: behind(low, high, committed),
                pending: None,
            });
        }
    }
    Ok(rows)
}

/// Moves each partition's high watermark in `ends` (partition → (low, high)) past what a
/// fetch from there reads, until each partition's end (see the module's documentation).
fn read_ends(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    ends: &mut BTreeMap<i32, (i64, i64)>,
) -> Result<(), BrokerError> {
    let fail = |e| from_kafka("lag", e);
    let mut assignment = TopicPartitionList::new();
    for (partition, (_, high)) in ends.iter() {
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(*high))
            .map_err(fail)?;
    }
    consumer.assign(&assignment).map_err(fail)?;
    let mut open: HashSet<i32> = ends.keys().copied().collect();
    let deadline = Instant::now() + READ_END_TIMEOUT;
    while !open.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) if message.topic() == topic => {
                if let Some((_, high)) = ends.get_mut(&message.partition()) {
                    *high = (*high).max(message.offset() + 1);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => return Err(fail(error)),
            // Logged by the context; librdkafka retries by itself, within the deadline.
            Some(Err(_)) => {}
        }
    }
    if !open.is_empty() {
        tracing::debug!(%topic, partitions = ?open, "the ends of these partitions were not confirmed by a fetch in time");
    }
    consumer.unassign().map_err(fail)?;
    // What the next topic's reading must not take for its own (an end-of-partition event
    // names a partition, not its topic).
    while consumer.poll(Duration::ZERO).is_some() {}
    Ok(())
}

/// What is left to read between `committed` (the next offset the group reads) and `high`
/// (one past the last message). A committed offset below `low` was deleted by retention
/// since: the group resumes at `low`, as it does with nothing committed.
fn behind(low: i64, high: i64, committed: Option<i64>) -> u64 {
    let from = committed.map_or(low, |c| c.max(low));
    u64::try_from(high - from).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_commit_or_from_what_is_retained() {
        assert_eq!(behind(0, 5000, None), 5000);
        assert_eq!(behind(100, 5000, None), 4900);
        assert_eq!(behind(0, 5000, Some(4000)), 1000);
        assert_eq!(behind(0, 5000, Some(5000)), 0);
        // Retention deleted past the commit: the group resumes at the low watermark.
        assert_eq!(behind(300, 5000, Some(200)), 4700);
        // A watermark read before the commit it races with never goes negative.
        assert_eq!(behind(0, 10, Some(12)), 0);
    }
}
