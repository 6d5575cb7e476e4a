//! Reading a topic from its beginning without consuming it (`consumer dlq list`): a
//! throwaway consumer, assigned every partition from its low watermark, that never joins a
//! group and never commits.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use messaging_core::{BrokerError, Message, Position};
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
    let fail = |e| from_kafka("browse", e);
    // librdkafka wants a group id even for manual assignment; this one is never joined
    // (no `subscribe`) and nothing is committed under it.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let group = format!("messaging-browse-{}-{nanos}", std::process::id());
    let consumer: BaseConsumer = settings
        .client_config(
            &[],
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
        )
        .create()
        .map_err(fail)?;
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
    // Per partition, the offset to stop before: the high watermark when browsing started,
    // or `limit` messages in.
    let mut until: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in found.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), TIMEOUT)
            .map_err(fail)?;
        if high > low {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(low))
                .map_err(fail)?;
            until.insert(partition.id(), high.min(low.saturating_add(limit as i64)));
        }
    }
    if until.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment).map_err(fail)?;
    let started = Instant::now();
    let mut messages = Vec::new();
    let names = messaging_core::TopicNames::new([topic]);
    while !until.is_empty() {
        if started.elapsed() > TIMEOUT {
            return Err(connection(KafkaSetupError::Unreachable {
                servers: settings.bootstrap_servers().to_owned(),
                timeout: TIMEOUT,
            }));
        }
        let Some(received) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = to_message(&received.map_err(fail)?, &names);
        let Position::Partition { partition, offset } = message.position else {
            continue;
        };
        let Some(&end) = until.get(&partition) else {
            continue;
        };
        if offset + 1 >= end {
            until.remove(&partition);
        }
        if offset < end {
            messages.push(message);
        }
    }
    messages.sort_by_key(|m| match m.position {
        Position::Partition { partition, offset } => (partition, offset),
        _ => (i32::MAX, i64::MAX),
    });
    messages.truncate(limit);
    Ok(messages)
}
