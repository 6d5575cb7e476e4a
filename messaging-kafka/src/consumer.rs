//! One member of a consumer group. Offsets are stored only when the runtime acknowledges
//! (`enable.auto.offset.store=false`) and committed by librdkafka's periodic auto-commit, on
//! revocation and on close, so a committed offset never passes an unfinished message.
//!
//! On revocation the stored offsets are committed at once; messages of revoked partitions
//! still in the handlers are not waited for: their acknowledgements are dropped and the new
//! owner reads them again (at least once, with duplicates bounded by what was in flight).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt as _;
use messaging_core::{Acker, BoxFuture, BrokerError, Consumer, Message, Position, StartFrom};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

use crate::convert::to_message;
use crate::error::{NAME, from_kafka, operation};
use crate::offsets::{Acked, OffsetTracker};

/// Broker requests made inside a rebalance (committed offsets, high watermarks, commit).
const REBALANCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Callbacks of one consumer: positions new partitions and keeps the offset tracker in step
/// with the assignment.
pub(crate) struct GroupContext {
    group: String,
    start: StartFrom,
    tracker: OffsetTracker,
    /// Assignments received so far; `subscribe` waits for the first.
    assignments: AtomicU64,
}

impl GroupContext {
    pub(crate) fn new(group: String, start: StartFrom) -> Self {
        Self {
            group,
            start,
            tracker: OffsetTracker::default(),
            assignments: AtomicU64::new(0),
        }
    }

    /// Sets where each new partition starts: its committed offset, else the beginning or the
    /// high watermark. Resolving "latest" here, before `subscribe` returns, means a message
    /// published after `subscribe` returned is always read (librdkafka's own reset would
    /// look the end up later, racing with such a publish).
    fn position(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let partitions = pairs(tpl);
        let committed = match base.committed_offsets(tpl.clone(), REBALANCE_REQUEST_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(group = %self.group, %error, "could not read committed offsets; librdkafka will");
                return;
            }
        };
        for (topic, partition) in partitions {
            let from_commit = committed
                .find_partition(&topic, partition)
                .map(|e| e.offset())
                .filter(|o| matches!(o, Offset::Offset(_)));
            let offset = match (from_commit, self.start) {
                (Some(offset), _) => offset,
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => {
                    match base.fetch_watermarks(&topic, partition, REBALANCE_REQUEST_TIMEOUT) {
                        Ok((_, high)) => Offset::Offset(high),
                        Err(error) => {
                            tracing::warn!(group = %self.group, %topic, partition, %error, "could not read the end offset; starting at the end later");
                            Offset::End
                        }
                    }
                }
            };
            if let Err(error) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::warn!(group = %self.group, %topic, partition, %error, "could not set the start offset");
            }
        }
    }

    fn on_assign(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        self.position(base, tpl);
        let partitions = pairs(tpl);
        self.tracker
            .assign(partitions.iter().map(|(t, p)| (t.as_str(), *p)));
        let assigned = match base.rebalance_protocol() {
            RebalanceProtocol::Cooperative => base.incremental_assign(tpl),
            _ => base.assign(tpl),
        };
        match assigned {
            Ok(()) => {
                tracing::info!(group = %self.group, partitions = ?partitions, "partitions assigned")
            }
            Err(error) => {
                tracing::error!(group = %self.group, %error, "assigning partitions failed")
            }
        }
        self.assignments.fetch_add(1, Ordering::Release);
    }

    fn on_revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions = pairs(tpl);
        // First stop storing for these partitions, then commit what was stored: nothing
        // stored after this commit can be lost to the next owner.
        self.tracker
            .revoke(partitions.iter().map(|(t, p)| (t.as_str(), *p)));
        if let Err(error) = commit_stored(base) {
            tracing::warn!(group = %self.group, %error, "committing offsets on revocation failed; the next owner may read some messages again");
        }
        let unassigned = match base.rebalance_protocol() {
            RebalanceProtocol::Cooperative => base.incremental_unassign(tpl),
            _ => base.unassign(),
        };
        match unassigned {
            Ok(()) => {
                tracing::info!(group = %self.group, partitions = ?partitions, "partitions revoked")
            }
            Err(error) => {
                tracing::error!(group = %self.group, %error, "unassigning partitions failed")
            }
        }
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    // Overridden (not `pre_rebalance`) because positioning needs the list mutable.
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(base, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(base, tpl),
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(group = %self.group, %code, "rebalance failed; dropping the assignment");
                self.on_revoke(base, tpl);
            }
        }
    }
}

fn pairs(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Commits the stored offsets; having nothing to commit is fine.
fn commit_stored<C: ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
) -> KafkaResult<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// A subscribed member of a group.
pub(crate) struct KafkaConsumer {
    /// `None` once closed. Ackers hold it weakly so dropping this leaves the group.
    consumer: Option<Arc<GroupConsumer>>,
    acker: Arc<KafkaAcker>,
    /// Messages received while waiting for the first assignment.
    buffered: VecDeque<Arc<Message>>,
}

impl KafkaConsumer {
    /// Waits (up to `timeout`) until the group has assigned this member its partitions,
    /// so that the positions are set when `subscribe` returns. Polling is what drives the
    /// rebalance callbacks; messages that arrive meanwhile are kept for `next_batch`.
    pub(crate) async fn joined(consumer: GroupConsumer, timeout: Duration) -> Self {
        let consumer = Arc::new(consumer);
        let mut buffered = VecDeque::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let context = consumer.context();
        while context.assignments.load(Ordering::Acquire) == 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(group = %context.group, ?timeout, "no partitions assigned yet; consuming as soon as they are");
                break;
            }
            match tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await {
                Ok(Ok(record)) => buffered.extend(track(&consumer, &record)),
                Ok(Err(error)) => tracing::debug!(group = %context.group, %error, "while joining"),
                Err(_elapsed) => {}
            }
        }
        Self {
            acker: Arc::new(KafkaAcker {
                consumer: Arc::downgrade(&consumer),
            }),
            consumer: Some(consumer),
            buffered,
        }
    }
}

/// The record as a message, if its partition is still assigned to this member.
fn track(consumer: &GroupConsumer, record: &BorrowedMessage<'_>) -> Option<Arc<Message>> {
    use rdkafka::Message as _;
    let tracker = &consumer.context().tracker;
    tracker
        .deliver(record.topic(), record.partition(), record.offset())
        .then(|| Arc::new(to_message(record)))
}

impl Consumer for KafkaConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(async move {
            let max = max.max(1);
            if !self.buffered.is_empty() {
                let n = max.min(self.buffered.len());
                return Ok(self.buffered.drain(..n).collect());
            }
            let consumer = self
                .consumer
                .as_ref()
                .ok_or(BrokerError::Closed { broker: NAME })?;
            let mut batch = Vec::new();
            // The only await: `recv` is cancel-safe, and nothing is taken before it resolves.
            while batch.is_empty() {
                let record = consumer
                    .recv()
                    .await
                    .map_err(|e| from_kafka("receive", e))?;
                batch.extend(track(consumer, &record));
            }
            // Whatever librdkafka already holds, without waiting.
            while batch.len() < max {
                match consumer.recv().now_or_never() {
                    Some(Ok(record)) => batch.extend(track(consumer, &record)),
                    Some(Err(error)) => {
                        tracing::warn!(%error, "Kafka consumer error");
                        break;
                    }
                    None => break,
                }
            }
            Ok(batch)
        })
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::clone(&self.acker) as Arc<dyn Acker>
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        let consumer = self.consumer.take();
        Box::pin(async move {
            let Some(consumer) = consumer else {
                return Ok(());
            };
            // Committing and leaving the group are blocking librdkafka calls.
            tokio::task::spawn_blocking(move || {
                let committed = commit_stored(&*consumer);
                drop(consumer);
                committed
            })
            .await
            .map_err(|e| operation("close", e))?
            .map_err(|e| from_kafka("commit", e))
        })
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Dropping the last handle leaves the group, which blocks: keep it off async threads.
        if let Some(consumer) = self.consumer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(consumer));
        }
    }
}

/// Stores offsets of acknowledged messages.
struct KafkaAcker {
    consumer: Weak<GroupConsumer>,
}

impl KafkaAcker {
    fn store(&self, message: &Message) -> Result<(), BrokerError> {
        let Position::Partition { partition, offset } = message.position else {
            return Err(operation(
                "acknowledge",
                format!("{} is not a Kafka position", message.position),
            ));
        };
        let consumer = self
            .consumer
            .upgrade()
            .ok_or(BrokerError::Closed { broker: NAME })?;
        let outcome = consumer
            .context()
            .tracker
            .ack(&message.topic, partition, offset, |next| {
                // `store_offsets` takes the next offset to read, as a commit does.
                let mut tpl = TopicPartitionList::with_capacity(1);
                tpl.add_partition_offset(&message.topic, partition, Offset::Offset(next))?;
                consumer.store_offsets(&tpl)
            })
            .map_err(|e| operation("store offset", e))?;
        if outcome == Acked::Stale {
            tracing::debug!(topic = %message.topic, partition, offset, "acknowledged after its partition was revoked; the new owner reads it again");
        }
        Ok(())
    }
}

impl Acker for KafkaAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        let result = self.store(message);
        Box::pin(async move { result })
    }
}
