//! Reading a topic from its beginning without consuming it (`consumer dlq list`): a
//! throwaway consumer outside any group, assigned every partition from its low watermark,
//! that never commits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use messaging_core::{BrokerError, Message};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::convert::to_message;
use crate::error::{KafkaSetupError, connection, from_kafka};
use crate::settings::KafkaSettings;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Up to `limit` messages of `topic`, ordered by partition and offset; none if the topic
/// does not exist. Blocking: run it off the async threads.
pub(crate) fn browse(
    settings: &KafkaSettings,
    topic: &str,
    limit: usize,
) -> Result<Vec<Message>, BrokerError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let consumer: BaseConsumer = settings
        .client_config(
            &[],
            &[
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
        )
        .create()
        .map_err(|e| from_kafka("browse", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| from_kafka("browse", e))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Vec::new());
    };
    if found.error().is_some() {
        // Unknown topic: nothing was ever dead-lettered there.
        return Ok(Vec::new());
    }
    // Per partition, the offset to read up to (the high watermark when browsing started).
    let mut until: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), TIMEOUT)
            .map_err(|e| from_kafka("browse", e))?;
        if high > low {
            tpl.add_partition_offset(topic, partition.id(), Offset::Offset(low))
                .map_err(|e| from_kafka("browse", e))?;
            until.insert(partition.id(), high.min(low.saturating_add(limit as i64)));
        }
    }
    if until.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl).map_err(|e| from_kafka("browse", e))?;
    let started = Instant::now();
    let mut messages = Vec::new();
    while !until.is_empty() {
        if started.elapsed() > TIMEOUT {
            return Err(connection(KafkaSetupError::Unreachable {
                servers: settings.bootstrap_servers().to_owned(),
                seconds: TIMEOUT.as_secs(),
            }));
        }
        let Some(received) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let record = received.map_err(|e| from_kafka("browse", e))?;
        let message = to_message(&record);
        let Some(&end) = until.get(&rdkafka::Message::partition(&record)) else {
            continue;
        };
        let offset = rdkafka::Message::offset(&record);
        if offset < end {
            messages.push(message);
        }
        if offset + 1 >= end {
            until.remove(&rdkafka::Message::partition(&record));
        }
    }
    messages.sort_by_key(|m| match m.position {
        messaging_core::Position::Partition { partition, offset } => (partition, offset),
        _ => (i32::MAX, i64::MAX),
    });
    messages.truncate(limit);
    Ok(messages)
}
