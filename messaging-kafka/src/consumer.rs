//! One member of a consumer group. Offsets are stored only for acknowledged messages
//! (`enable.auto.offset.store=false`) and committed by librdkafka's periodic auto-commit, on
//! revocation and on close, so a committed offset never passes an unfinished message.
//!
//! Records are read in batches from the member's [`RecordQueue`], to which each partition is
//! forwarded as it is assigned; the main queue, read too, serves the group's events.
//!
//! Acknowledging records the message in the [`OffsetTracker`]; the advanced offsets are
//! handed to librdkafka once per batch by the consumer task, and every 200 ms by a
//! background task (for when the runtime is busy with handlers and not fetching).
//!
//! On revocation the handlers first get up to 10 s to finish what they hold of the revoked
//! partitions (on a multi-thread runtime; the rebalance waits meanwhile); then the settled
//! offsets are stored and committed. Acknowledgements that come later are dropped and the new
//! owner reads those messages again (at least once, duplicates bounded by what was still in
//! flight).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt as _};
use messaging_core::{
    Acker, BoxFuture, BrokerError, Consumer, Message, Position, Readiness, StartFrom, TopicNames,
};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{NAME, from_kafka, operation};
use crate::offsets::{Acked, OffsetTracker, ToStore};
use crate::received::Received;
use crate::records::{BATCH, Record, RecordQueue};

/// Broker requests made inside a rebalance (committed offsets, high watermarks, commit).
const REBALANCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a revocation waits for the handlers to finish what they hold of the revoked
/// partitions before committing (the group's rebalance waits meanwhile).
const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often acknowledged offsets are stored when the consumer task does not fetch.
const STORE_INTERVAL: Duration = Duration::from_millis(200);

/// While the client reports errors, how often the cluster is asked whether it answers
/// again, and how long each try waits.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the consumer task and its acker share.
#[derive(Default)]
pub(crate) struct Acks {
    tracker: OffsetTracker,
    /// Set on close: later acknowledgements cannot be stored any more.
    closed: AtomicBool,
}

/// Callbacks of one consumer: positions new partitions, keeps the offset tracker in step
/// with the assignment, and tells `/health/ready` whether the member consumes and whether
/// the client keeps failing.
pub(crate) struct GroupContext {
    group: String,
    start: StartFrom,
    acks: Arc<Acks>,
    /// Assignments received so far; `subscribe` waits for the first.
    assignments: AtomicU64,
    /// Where the assigned partitions' records go; `None` until the consumer exists and once
    /// it is being dropped (records then come on the main queue).
    records: Mutex<Option<RecordQueue>>,
    /// Ready from an assignment until its partitions are revoked.
    readiness: Readiness,
    /// Whether the client reported errors since it last fetched or answered a probe.
    troubled: AtomicBool,
    /// A topic of the subscription, whose metadata the probe asks for.
    probe_topic: String,
    /// When the last probe started, and whether one is under way.
    probe: Mutex<(Option<Instant>, bool)>,
}

impl GroupContext {
    pub(crate) fn new(group: String, start: StartFrom, probe_topic: String) -> Self {
        Self {
            group,
            start,
            acks: Arc::default(),
            assignments: AtomicU64::new(0),
            records: Mutex::new(None),
            readiness: Readiness::pending(),
            troubled: AtomicBool::new(false),
            probe_topic,
            probe: Mutex::new((None, false)),
        }
    }

    /// The client reported an error: `/health/ready` learns of it (and fails once it has
    /// lasted), until a fetch or a probe succeeds.
    fn trouble(&self, what: impl std::fmt::Display) {
        self.readiness.report("fetch", what);
        self.troubled.store(true, Ordering::Release);
    }

    /// Records arrived or the cluster answered: whatever was failing works again.
    fn untroubled(&self) {
        if self.troubled.swap(false, Ordering::AcqRel) {
            self.readiness.clear("fetch");
            tracing::info!(group = %self.group, "Kafka answers again");
        }
    }

    /// Whether to probe the cluster now (errors were reported, no probe is under way and the
    /// last one is [`PROBE_EVERY`] old); if so the probe counts as started.
    fn probe_due(&self, now: Instant) -> bool {
        if !self.troubled.load(Ordering::Acquire) {
            return false;
        }
        let mut probe = self.probe.lock().unwrap_or_else(PoisonError::into_inner);
        let due = !probe.1
            && probe
                .0
                .is_none_or(|last| now.duration_since(last) >= PROBE_EVERY);
        if due {
            *probe = (Some(now), true);
        }
        due
    }

    /// Asks the cluster for a topic's metadata; blocking, up to [`PROBE_TIMEOUT`].
    fn probe(&self, consumer: &impl rdkafka::consumer::Consumer<Self>) {
        let answered = consumer
            .fetch_metadata(Some(&self.probe_topic), PROBE_TIMEOUT)
            .is_ok();
        self.probe.lock().unwrap_or_else(PoisonError::into_inner).1 = false;
        if answered {
            self.untroubled();
        }
    }

    fn record_queue(&self) -> MutexGuard<'_, Option<RecordQueue>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands each record the record queue holds (up to `max`) to `each`.
    fn take_records(&self, max: usize, each: impl FnMut(&Record)) {
        if let Some(queue) = self.record_queue().as_ref() {
            queue.take(max, each, |error| {
                crate::quiet::warn(error);
                self.trouble(error);
            });
        }
    }

    /// Ready when the record queue holds something (never without a queue).
    fn poll_records(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.record_queue()
            .as_ref()
            .map_or(Poll::Pending, |queue| queue.poll_nonempty(cx))
    }

    /// Sends the records of partitions about to be assigned to the record queue. A
    /// partition not forwarded (no queue, or it is in use: this never waits inside a
    /// callback) has its records on the main queue, which is read too.
    fn forward(&self, base: &BaseConsumer<Self>, partitions: &[(String, i32)]) {
        let Ok(records) = self.records.try_lock() else {
            tracing::debug!(group = %self.group, "record queue busy; records of the new partitions come on the main queue");
            return;
        };
        let Some(queue) = records.as_ref() else {
            return;
        };
        let rk = base.client().native_ptr();
        for (topic, partition) in partitions {
            if !queue.forward(rk, topic, *partition) {
                tracing::debug!(group = %self.group, %topic, partition, "partition not forwarded; its records come on the main queue");
            }
        }
    }

    /// Sets where each new partition starts: its committed offset, else the beginning or the
    /// high watermark. Resolving "latest" here, before `subscribe` returns, means a message
    /// published after `subscribe` returned is always read (librdkafka's own reset would
    /// look the end up later, racing with such a publish). The two requests block the
    /// thread polling the consumer, once per rebalance.
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
        self.forward(base, &partitions);
        self.acks
            .tracker
            .assign(partitions.iter().map(|(t, p)| (t.as_str(), *p)));
        let assigned = match base.rebalance_protocol() {
            RebalanceProtocol::Cooperative => base.incremental_assign(tpl),
            _ => base.assign(tpl),
        };
        match assigned {
            // The first assignment of a generation: positions are set, so a message published
            // from now on is read (with `StartFrom::Latest` too).
            Ok(()) if !self.readiness.is_ready() => {
                self.readiness.set_ready(true);
                self.untroubled();
                tracing::info!(group = %self.group, partitions = ?partitions, "consuming");
            }
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
        self.finish_in_flight(&partitions);
        // Stop tracking these partitions, store what was settled, then commit: nothing
        // acknowledged after this point can be lost to the next owner, it is read again.
        let unstored = self
            .acks
            .tracker
            .revoke(partitions.iter().map(|(t, p)| (t.as_str(), *p)));
        if let Err(error) = store(base, &unstored).and_then(|()| commit_stored(base)) {
            tracing::warn!(group = %self.group, %error, "committing offsets on revocation failed; the next owner may read some messages again");
        }
        let unassigned = match base.rebalance_protocol() {
            RebalanceProtocol::Cooperative => base.incremental_unassign(tpl),
            _ => {
                // Everything is revoked: not consuming until the next generation's assignment.
                self.readiness.set_ready(false);
                base.unassign()
            }
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

    /// Lets the handlers finish what they hold of revoked partitions (up to
    /// [`REVOKE_DRAIN_TIMEOUT`]), so that it is committed and the next owner does not read it
    /// again. The callback runs inside the poll of a runtime task, so the wait hands that
    /// worker's other tasks to another thread (`block_in_place`): the handlers go on
    /// meanwhile. Only on a multi-thread runtime (on one thread they could not run), and not
    /// once the consumer is closing (its acknowledgements are refused by then).
    fn finish_in_flight(&self, partitions: &[(String, i32)]) {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread || self.acks.closed.load(Ordering::SeqCst) {
            return;
        }
        let drain = || self.acks.tracker.drain(partitions, REVOKE_DRAIN_TIMEOUT);
        // `block_in_place` refuses (panics) inside a `LocalSet`: then do not wait, and never
        // let a panic out into librdkafka's callback.
        let Ok(unsettled) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tokio::task::block_in_place(drain)
        })) else {
            return;
        };
        if unsettled > 0 {
            tracing::warn!(group = %self.group, unsettled, timeout = ?REVOKE_DRAIN_TIMEOUT, "partitions revoked with messages still being handled; the next owner reads them again");
        }
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::quiet::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::quiet::error(&error, reason);
        self.trouble(format_args!("{error}: {reason}"));
    }
}

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

/// Hands next-to-read offsets to librdkafka's offset store (local, no I/O); the next
/// commit sends them.
fn store<C: ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
    offsets: &[ToStore],
) -> KafkaResult<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, next) in offsets {
        // `store_offsets` takes the next offset to read, as a commit does (whereas
        // `store_offset` takes the last one handled and adds 1 itself).
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    consumer.store_offsets(&tpl)
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

pub(crate) type GroupConsumer = StreamConsumer<GroupContext>;

/// A consumer with its record queue, which it destroys first: librdkafka's queue handles
/// must go before their client.
struct Member(GroupConsumer);

impl Member {
    /// Installs the record queue; before the first poll, so before any assignment.
    fn new(consumer: GroupConsumer) -> Self {
        let queue = RecordQueue::new(consumer.client().native_ptr());
        if queue.is_none() {
            tracing::warn!(group = %consumer.context().group, "no record queue; reading records one by one");
        }
        *consumer.context().record_queue() = queue;
        Self(consumer)
    }
}

impl std::ops::Deref for Member {
    type Target = GroupConsumer;

    fn deref(&self) -> &GroupConsumer {
        &self.0
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Taken out first, so that it is destroyed outside the lock.
        let queue = self.0.context().record_queue().take();
        drop(queue);
    }
}

/// Stores what was acknowledged since the last call.
fn store_acknowledged(consumer: &GroupConsumer) {
    let unstored = consumer.context().acks.tracker.take_unstored();
    if let Err(error) = store(consumer, &unstored) {
        // The partition was revoked meanwhile: its new owner reads those messages again.
        tracing::debug!(%error, "storing offsets failed");
    }
}

/// Stores acknowledged offsets every [`STORE_INTERVAL`] until the consumer is gone.
async fn store_periodically(consumer: Weak<Member>) {
    let mut ticks = tokio::time::interval(STORE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        store_acknowledged(&consumer);
        if consumer.context().probe_due(Instant::now()) {
            let probing = Arc::clone(&consumer);
            tokio::task::spawn_blocking(move || probing.context().probe(&**probing));
        }
        if Arc::strong_count(&consumer) == 1 {
            // Dropped meanwhile and this is the last handle: leave the group off this thread.
            tokio::task::spawn_blocking(move || drop(consumer));
            return;
        }
    }
}

/// Drops the last handle of a consumer (leaving the group, which blocks) off the async
/// threads when there are some.
fn drop_off_thread(consumer: Arc<Member>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(consumer))),
        Err(_) => drop(consumer),
    }
}

/// Whether an error the consumer returns ends it: librdkafka gives up (a fatal error)
/// rather than retrying by itself.
fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageConsumptionFatal(_))
}

/// A subscribed member of a group.
pub(crate) struct KafkaConsumer {
    /// `None` once closed. The periodic store task holds it weakly.
    consumer: Option<Arc<Member>>,
    acker: Arc<KafkaAcker>,
    /// Messages received while waiting for the first assignment.
    buffered: VecDeque<Arc<Message>>,
    /// The subscribed topics' names, shared by the messages received.
    names: TopicNames,
    /// Makes the messages of the records received.
    messages: Received,
    /// Pending until the first assignment (shared with the context, which sets it).
    readiness: Readiness,
}

impl KafkaConsumer {
    /// Waits (up to `timeout`) until the group has assigned this member its partitions,
    /// so that the positions are set when `subscribe` returns. Polling is what drives the
    /// rebalance callbacks; messages that arrive meanwhile are kept for `next_batch`.
    pub(crate) async fn joined(
        consumer: GroupConsumer,
        names: TopicNames,
        timeout: Duration,
    ) -> Self {
        Self::join(Member::new(consumer), names, timeout).await
    }

    /// As [`KafkaConsumer::joined`], without a record queue: every record then comes on
    /// the main queue, as those of a partition that could not be forwarded do.
    #[cfg(test)]
    pub(crate) async fn joined_without_record_queue(
        consumer: GroupConsumer,
        names: TopicNames,
        timeout: Duration,
    ) -> Self {
        Self::join(Member(consumer), names, timeout).await
    }

    async fn join(consumer: Member, names: TopicNames, timeout: Duration) -> Self {
        let mut buffered = VecDeque::new();
        let mut messages = Received::default();
        let deadline = tokio::time::Instant::now() + timeout;
        let context = consumer.context();
        let mut stream = consumer.stream();
        while context.assignments.load(Ordering::Acquire) == 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(group = %context.group, ?timeout, "no partitions assigned yet; consuming as soon as they are");
                break;
            }
            match tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
                Ok(Some(Ok(record))) => {
                    let mut one = vec![messages.make(&record, &names)];
                    context.acks.tracker.deliver(&mut one);
                    buffered.extend(one);
                }
                Ok(Some(Err(error))) => {
                    tracing::debug!(group = %context.group, %error, "while joining")
                }
                Ok(None) | Err(_) => {}
            }
        }
        drop(stream);
        let acks = Arc::clone(&context.acks);
        let readiness = context.readiness.clone();
        let consumer = Arc::new(consumer);
        tokio::spawn(store_periodically(Arc::downgrade(&consumer)));
        Self {
            acker: Arc::new(KafkaAcker { acks }),
            consumer: Some(consumer),
            buffered,
            names,
            messages,
            readiness,
        }
    }
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
            let context = consumer.context();
            let (names, messages) = (&self.names, &mut self.messages);
            let mut stream = consumer.stream();
            loop {
                store_acknowledged(consumer);
                let mut received = Vec::with_capacity(max.min(BATCH));
                // The main queue first: it serves the group's events, and carries the records
                // of any partition that was not forwarded to the record queue.
                while received.len() < max {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(record))) => received.push(messages.make(&record, names)),
                        Some(Some(Err(error))) => {
                            // Logged (rate-limited) and reported by the context's error
                            // callback already; librdkafka retries by itself.
                            if is_fatal(&error) {
                                return Err(from_kafka("receive", error));
                            }
                            break;
                        }
                        Some(None) | None => break,
                    }
                }
                if received.len() < max {
                    context.take_records(max - received.len(), |record| {
                        received.push(messages.make(record, names))
                    });
                }
                if received.is_empty() {
                    // The only await; cancel-safe: the stream takes a message only when it
                    // returns it, and the record queue is only looked at.
                    let next = futures::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
                        Poll::Ready(next) => Poll::Ready(Some(next)),
                        Poll::Pending => context.poll_records(cx).map(|()| None),
                    })
                    .await;
                    match next {
                        Some(None) => return Err(BrokerError::Closed { broker: NAME }),
                        Some(Some(Ok(first))) => received.push(messages.make(&first, names)),
                        Some(Some(Err(error))) if is_fatal(&error) => {
                            return Err(from_kafka("receive", error));
                        }
                        // Already logged and reported by the error callback; librdkafka
                        // reconnects by itself. Records arrived: take them on the next turn.
                        Some(Some(Err(_))) | None => continue,
                    }
                }
                context.acks.tracker.deliver(&mut received);
                if !received.is_empty() {
                    context.untroubled();
                    return Ok(received);
                }
            }
        })
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::clone(&self.acker) as Arc<dyn Acker>
    }

    fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        let consumer = self.consumer.take();
        Box::pin(async move {
            let Some(consumer) = consumer else {
                return Ok(());
            };
            consumer.context().acks.closed.store(true, Ordering::SeqCst);
            store_acknowledged(&consumer);
            // Committing and leaving the group are blocking librdkafka calls.
            tokio::task::spawn_blocking(move || {
                let committed = commit_stored(&**consumer);
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
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        consumer.context().acks.closed.store(true, Ordering::SeqCst);
        store_acknowledged(&consumer);
        // Leaving the group commits what is stored.
        drop_off_thread(consumer);
    }
}

/// Records acknowledgements for the consumer task to store.
struct KafkaAcker {
    acks: Arc<Acks>,
}

impl KafkaAcker {
    /// Records the acknowledgement; the store happens later, so this never waits.
    fn record(&self, message: &Message) -> Result<(), BrokerError> {
        self.open()?;
        let (partition, offset) = kafka_position(message)?;
        if self.acks.tracker.ack(&message.topic, partition, offset) == Acked::Stale {
            tracing::debug!(topic = %message.topic, partition, offset, "acknowledged after its partition was revoked; the new owner reads it again");
        }
        Ok(())
    }

    /// Acknowledgements are refused once the consumer closed.
    fn open(&self) -> Result<(), BrokerError> {
        if self.acks.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::Closed { broker: NAME });
        }
        Ok(())
    }
}

fn kafka_position(message: &Message) -> Result<(i32, i64), BrokerError> {
    match message.position {
        Position::Partition { partition, offset } => Ok((partition, offset)),
        _ => Err(operation(
            "acknowledge",
            format!("{} is not a Kafka position", message.position),
        )),
    }
}

impl Acker for KafkaAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        let result = self.record(message);
        Box::pin(async move { result })
    }

    fn ack_now(&self, message: &Message) -> Option<Result<(), BrokerError>> {
        Some(self.record(message))
    }

    fn ack_all_now(&self, messages: &[Arc<Message>]) -> Option<Result<(), BrokerError>> {
        if let Err(closed) = self.open() {
            return Some(Err(closed));
        }
        // Under one lock; a message that is not Kafka's is reported, as `ack` would.
        let mut outcome = Ok(());
        let positions = messages.iter().filter_map(|m| match kafka_position(m) {
            Ok((partition, offset)) => Some((&*m.topic, partition, offset)),
            Err(error) => {
                if outcome.is_ok() {
                    outcome = Err(error);
                }
                None
            }
        });
        let stale = self.acks.tracker.ack_all(positions);
        if stale > 0 {
            tracing::debug!(
                stale,
                "acknowledged after their partition was revoked; the new owner reads them again"
            );
        }
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            position: Position::Partition { partition, offset },
            ..Message::default()
        })
    }

    #[test]
    fn a_batch_is_acknowledged_under_one_lock_and_reports_what_is_not_kafkas() {
        let acker = KafkaAcker {
            acks: Arc::default(),
        };
        let tracker = &acker.acks.tracker;
        tracker.assign([("t", 0)]);
        let mut delivered = vec![at(0, 10), at(0, 11)];
        tracker.deliver(&mut delivered);
        let foreign = Arc::new(Message::new("t", Vec::<u8>::new()));
        let outcome = acker.ack_all_now(&[at(0, 10), foreign, at(0, 11)]);
        let error = outcome
            .expect("answers at once")
            .expect_err("not a Kafka position");
        assert!(
            error.to_string().contains("not a Kafka position"),
            "{error}"
        );
        assert_eq!(
            tracker.take_unstored(),
            vec![("t".to_owned(), 0, 12)],
            "the Kafka messages are acknowledged all the same"
        );
        acker.acks.closed.store(true, Ordering::SeqCst);
        assert!(matches!(
            acker.ack_all_now(&[at(0, 12)]),
            Some(Err(BrokerError::Closed { .. }))
        ));
    }
}
