//! `consumer dlq replay`: re-publishes the dead-letter records waiting when it starts, each
//! once, to their original topics, and takes them out of the DLQ ([`Broker::dlq_snapshot`]).
//! It ends even while the handler still fails: what is dead-lettered again meanwhile waits,
//! with its replay count raised, for the next replay.

use std::fmt;

use crate::broker::Broker;
use crate::dlq::DeadLetterRecord;
use crate::error::Error;
use crate::message::{Message, OutgoingMessage};

/// What to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The original topic whose records are replayed.
    pub topic: String,
    /// The DLQ topic holding them.
    pub dlq_topic: String,
    /// Whether the DLQ holds other topics' records too (they are left alone).
    pub shared: bool,
    /// At most this many records of the DLQ are looked at.
    pub limit: usize,
    /// Only the record with this id ([`record_id`]).
    pub id: Option<String>,
    /// Report what would be replayed; change nothing.
    pub dry_run: bool,
    /// Replay records replayed `max_replays` times already.
    pub force: bool,
    /// Records replayed this many times are kept unless `force`.
    pub max_replays: u32,
}

impl ReplayOptions {
    /// Replays every record of `topic` in `dlq_topic`, with the default limits.
    pub fn new(topic: impl Into<String>, dlq_topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            dlq_topic: dlq_topic.into(),
            shared: false,
            limit: 10_000,
            id: None,
            dry_run: false,
            force: false,
            max_replays: 3,
        }
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    /// The DLQ topic.
    pub dlq_topic: String,
    /// Records re-published (or, in a dry run, that would be).
    pub replayed: usize,
    /// Records of the topic left in the DLQ, each as its id ([`record_id`], or where the
    /// DLQ holds it when it is no record) and why.
    pub kept: Vec<String>,
    /// Records of the topic not looked at (past `limit`, or after a failed publish).
    pub unreached: usize,
    /// In a dry run: the id of each record that would be replayed, and its topic.
    pub would_replay: Vec<(String, String)>,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

impl ReplayReport {
    /// Records of the topic still waiting in the DLQ.
    pub fn left(&self) -> usize {
        self.kept.len() + self.unreached
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            return write!(
                f,
                "dry run: would replay {}, skip {} (from {}); nothing changed",
                self.replayed,
                self.kept.len(),
                self.dlq_topic
            );
        }
        write!(
            f,
            "replayed {}, skipped {}, left {} (from {})",
            self.replayed,
            self.kept.len(),
            self.left(),
            self.dlq_topic
        )
    }
}

/// A record's id for `--id`: its own, else (records written before ids existed) where the
/// DLQ holds it.
pub fn record_id(record: &DeadLetterRecord, message: &Message) -> String {
    record
        .id
        .clone()
        .unwrap_or_else(|| message.position.to_string())
}

/// What a replay does with one record.
enum Verdict {
    /// Re-published, with the record's id.
    Replay(String, OutgoingMessage),
    /// Left in the DLQ, with why.
    Keep(String),
    /// Another topic's record in a shared DLQ, or not the `id` asked for: left alone.
    Other,
}

fn verdict(message: &Message, options: &ReplayOptions) -> Verdict {
    let record = match DeadLetterRecord::from_bytes(&message.payload) {
        Ok(record) => record,
        Err(error) if options.id.is_none() && !options.shared => {
            return Verdict::Keep(format!("{}: not a DLQ record ({error})", message.position));
        }
        Err(_) => return Verdict::Other,
    };
    let other_topic = options.shared && record.original.topic != options.topic;
    let other_id = options
        .id
        .as_ref()
        .is_some_and(|id| *id != record_id(&record, message));
    if other_topic || other_id {
        return Verdict::Other;
    }
    if record.replays >= options.max_replays && !options.force {
        return Verdict::Keep(format!(
            "{}: replayed {} times already (the limit is {}); pass --force to replay it again",
            record_id(&record, message),
            record.replays,
            options.max_replays
        ));
    }
    match record.to_replay() {
        Ok(out) => Verdict::Replay(record_id(&record, message), out),
        Err(error) => Verdict::Keep(format!("{}: {error}", record_id(&record, message))),
    }
}

/// Replays the records of `options.topic` waiting in its DLQ now. Each is published and
/// confirmed before it leaves the DLQ; a record that cannot be replayed stays there. A failed
/// publish stops the replay: what was published before it still leaves the DLQ, and the error
/// is returned after that.
pub async fn replay(broker: &dyn Broker, options: &ReplayOptions) -> Result<ReplayReport, Error> {
    let snapshot = broker
        .dlq_snapshot(&options.dlq_topic, options.limit)
        .await?;
    let mut report = ReplayReport {
        dlq_topic: options.dlq_topic.clone(),
        dry_run: options.dry_run,
        ..ReplayReport::default()
    };
    let mut replayed = Vec::new();
    let mut failure = None;
    for (index, message) in snapshot.records().iter().enumerate() {
        if failure.is_some() {
            if !matches!(verdict(message, options), Verdict::Other) {
                report.unreached += 1;
            }
            continue;
        }
        match verdict(message, options) {
            Verdict::Replay(id, out) if options.dry_run => {
                report.would_replay.push((id, out.topic));
                replayed.push(index);
            }
            Verdict::Replay(_, out) => {
                let topic = out.topic.clone();
                match broker.publish(out).await {
                    Ok(()) => {
                        tracing::debug!(%topic, position = %message.position, "replayed");
                        replayed.push(index);
                    }
                    Err(error) => {
                        report.unreached += 1;
                        failure = Some(error);
                    }
                }
            }
            Verdict::Keep(why) => report.kept.push(why),
            Verdict::Other => {}
        }
    }
    report.replayed = replayed.len();
    if options.dry_run {
        // Dropping the snapshot unsettled leaves every record where it was.
        return Ok(report);
    }
    snapshot.settle(replayed).await?;
    broker.flush(std::time::Duration::from_secs(10)).await?;
    if let Some(error) = failure {
        return Err(error.into());
    }
    if let Some(id) = &options.id
        && report.replayed + report.kept.len() == 0
    {
        return Err(Error::Config {
            key: "--id".to_owned(),
            message: format!("no record with id {id} waits in {}", options.dlq_topic),
        });
    }
    Ok(report)
}
