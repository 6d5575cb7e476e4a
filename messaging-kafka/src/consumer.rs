//! One member of a consumer group. The client is polled on a thread of its own, which hands
//! the fetched records to the async side over a channel, in batches, and never waits for it:
//! so the member keeps polling (and is never taken out of its group for exceeding
//! `max.poll.interval.ms`) while handlers are slow or in back-off, and librdkafka's rebalance
//! callbacks, with their blocking requests, run on that thread, never on a Tokio worker.
//!
//! Offsets are stored only for acknowledged messages (`enable.auto.offset.store=false`):
//! acknowledging records the message in the [`OffsetTracker`], and the polling thread stores
//! what advanced once per round (at least every [`POLL_WAIT`]); librdkafka's auto-commit
//! sends it, as do a revocation and closing. A stored offset never passes an unsettled
//! message of its partition, however out of order the acknowledgements come.
//!
//! Memory stays bounded while a key is blocked: each assigned partition has a queue of its
//! own (`split_partition_queue`), read only while the partition holds fewer than its limit of
//! delivered messages unsettled ([`OffsetTracker::room`]); the main queue serves the group's
//! events meanwhile. A partition that stays full with its offset stuck (a blocked key) is
//! paused, so that librdkafka stops fetching ahead for it, and resumed once it has drained to
//! half ([`OffsetTracker::flow`]). Pausing a partition that is merely busy would throw away
//! what librdkafka fetched ahead: the bench's consume rate fell twentyfold that way.
//!
//! On revocation the handlers first get up to [`REVOKE_DRAIN_TIMEOUT`] to finish what they
//! hold of the revoked partitions (the rebalance waits meanwhile, on the polling thread);
//! then the settled offsets are stored and committed, before the partitions go.
//! Acknowledgements that come later are dropped, messages of those partitions fetched but
//! not yet handed out are not handed out, and the new owner reads them again (at least once,
//! duplicates bounded by what was still in flight).
//!
//! A client that librdkafka declares dead (a fatal error, seen by the error callback or
//! returned by a poll: a static member fenced by another with the same `group.instance.id`)
//! fetches nothing any more: `next_batch` returns [`BrokerError::ClientDead`] once, and the
//! runtime closes this consumer and subscribes again with a new one.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use messaging_core::{
    Acker, BoxFuture, BrokerError, Consumer, Message, Position, Readiness, StartFrom, TopicNames,
};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{NAME, from_kafka, operation};
use crate::offsets::{Acked, OffsetTracker, ToStore};
use crate::received::Received;

/// The most records one round of the polling thread hands over at once.
pub(crate) const BATCH: usize = 256;

/// How long the polling thread sleeps at most when nothing comes (its queues wake it); its
/// other work (storing offsets, pausing and resuming, noticing a stop) happens at least this
/// often.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How long the polling thread sleeps at most when a partition is full (acknowledgements
/// wake it once it has room), and when one is paused (resumed once drained to half).
const FULL_POLL_WAIT: Duration = Duration::from_millis(20);
const PAUSED_POLL_WAIT: Duration = Duration::from_millis(20);

/// How long a full partition's offset to commit must stay put before it is paused.
const STUCK_AFTER: Duration = Duration::from_secs(1);

/// Broker requests made inside a rebalance (committed offsets, high watermarks, commit).
const REBALANCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a revocation waits at most for the handlers to finish what they hold of the
/// revoked partitions before committing (the group's rebalance waits meanwhile). Less when
/// `max.poll.interval.ms` is short: half of it.
pub(crate) const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// While the client reports errors, how often the cluster is asked whether it answers
/// again, and how long each try waits (on the polling thread).
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How much a partition may hold before it is paused: delivered messages not yet settled
/// (`unsettled`), and offsets since its lowest unsettled one (`span`, which bounds what a
/// crash makes the group read again and the tracker's memory).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) unsettled: usize,
    pub(crate) span: usize,
}

impl Limits {
    /// For a subscription that holds up to `prefetch` unacknowledged messages: twice that
    /// per partition. The runtime fetches only while its own window (at least four times
    /// `prefetch`) has room for a batch, so one partition blocked behind a key leaves room
    /// for the others to flow.
    pub(crate) fn for_prefetch(prefetch: usize) -> Self {
        let unsettled = (2 * prefetch).max(2);
        Self {
            unsettled,
            span: 64 * unsettled,
        }
    }
}

/// What the consumer's two sides share.
#[derive(Default)]
pub(crate) struct Acks {
    tracker: OffsetTracker,
    /// Set on close: later acknowledgements cannot be stored any more.
    closed: AtomicBool,
}

/// Callbacks of one consumer, run on its polling thread: positions new partitions, keeps
/// the offset tracker in step with the assignment, and tells `/health/ready` whether the
/// member consumes and whether the client keeps failing.
pub(crate) struct GroupContext {
    group: String,
    start: StartFrom,
    acks: Arc<Acks>,
    /// Assignments received so far; `subscribe` waits for the first.
    assignments: watch::Sender<u64>,
    /// Ready from an assignment until its partitions are revoked.
    readiness: Readiness,
    /// Whether the client reported errors since it last fetched or answered a probe.
    troubled: AtomicBool,
    /// A topic of the subscription, whose metadata the probe asks for.
    probe_topic: String,
    /// When the last probe was made.
    probed: Mutex<Option<Instant>>,
    /// How long a revocation waits for in-flight messages.
    drain_timeout: Duration,
    /// Set by a rebalance: the polling thread gives the partitions their queues again.
    rebalanced: AtomicBool,
    /// Why librdkafka declared the client dead (a fatal error), once it did.
    dead: OnceLock<String>,
}

impl GroupContext {
    pub(crate) fn new(
        group: String,
        start: StartFrom,
        probe_topic: String,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            group,
            start,
            acks: Arc::default(),
            assignments: watch::Sender::new(0),
            readiness: Readiness::pending(),
            troubled: AtomicBool::new(false),
            probe_topic,
            probed: Mutex::new(None),
            drain_timeout,
            rebalanced: AtomicBool::new(false),
            dead: OnceLock::new(),
        }
    }

    /// Records that the client is dead; the polling thread tells the async side.
    fn mark_dead(&self, why: impl std::fmt::Display) {
        let _ = self.dead.set(why.to_string());
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

    /// Whether to probe the cluster now (errors were reported and the last probe is
    /// [`PROBE_EVERY`] old); if so the probe counts as made.
    fn probe_due(&self, now: Instant) -> bool {
        if !self.troubled.load(Ordering::Acquire) {
            return false;
        }
        let mut probed = self.probed.lock().unwrap_or_else(PoisonError::into_inner);
        let due = probed.is_none_or(|last| now.duration_since(last) >= PROBE_EVERY);
        if due {
            *probed = Some(now);
        }
        due
    }

    /// Asks the cluster for a topic's metadata; blocking, up to [`PROBE_TIMEOUT`].
    fn probe(&self, consumer: &BaseConsumer<Self>) {
        if consumer
            .fetch_metadata(Some(&self.probe_topic), PROBE_TIMEOUT)
            .is_ok()
        {
            self.untroubled();
        }
    }

    /// Sets where each new partition starts: its committed offset, else the beginning or the
    /// high watermark. Resolving "latest" here, before `subscribe` returns, means a message
    /// published after `subscribe` returned is always read (librdkafka's own reset would
    /// look the end up later, racing with such a publish). The two requests block the
    /// polling thread, once per rebalance.
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
        self.rebalanced.store(true, Ordering::Release);
        self.assignments.send_modify(|n| *n += 1);
    }

    fn on_revoke(&self, base: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let partitions = pairs(tpl);
        self.finish_in_flight(&partitions);
        // Stop tracking these partitions, store what was settled, then commit: nothing
        // acknowledged after this point can be lost to the next owner, it is read again.
        let revoked = self
            .acks
            .tracker
            .revoke(partitions.iter().map(|(t, p)| (t.as_str(), *p)));
        if let Err(error) = store(base, &revoked.unstored).and_then(|()| commit_stored(base)) {
            tracing::warn!(group = %self.group, %error, "committing offsets on revocation failed; the next owner may read some messages again");
        }
        if !revoked.paused.is_empty()
            && let Err(error) = list(&revoked.paused).and_then(|tpl| base.resume(&tpl))
        {
            tracing::warn!(group = %self.group, %error, "could not resume revoked partitions");
        }
        self.rebalanced.store(true, Ordering::Release);
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

    /// Lets the handlers finish what they hold of revoked partitions (up to the drain
    /// timeout), so that it is committed and the next owner does not read it again. This
    /// runs on the polling thread; the handlers go on meanwhile on the runtime, whatever its
    /// flavor. Not once the consumer is closing (its acknowledgements are refused by then).
    fn finish_in_flight(&self, partitions: &[(String, i32)]) {
        if self.acks.closed.load(Ordering::SeqCst) {
            return;
        }
        let unsettled = self.acks.tracker.drain(partitions, self.drain_timeout);
        if unsettled > 0 {
            tracing::warn!(group = %self.group, unsettled, timeout = ?self.drain_timeout, "partitions revoked with messages still being handled; the next owner reads them again");
        }
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::quiet::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::quiet::error(&error, reason);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.mark_dead(format_args!("{error}: {reason}"));
        }
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

/// The partitions as librdkafka's list.
fn list(partitions: &[(String, i32)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        tpl.add_partition_offset(topic, *partition, Offset::Invalid)?;
    }
    Ok(tpl)
}

pub(crate) type GroupConsumer = BaseConsumer<GroupContext>;

/// What the polling thread hands over: records fetched in one round, with the tracker's
/// generation then, or an error that ends the client.
type Fetched = Result<(u64, Vec<Arc<Message>>), BrokerError>;

/// Stores what was acknowledged since the last call.
fn store_acknowledged(consumer: &GroupConsumer) {
    let unstored = consumer.context().acks.tracker.take_unstored();
    if let Err(error) = store(consumer, &unstored) {
        // The partition was revoked meanwhile: its new owner reads those messages again.
        tracing::debug!(%error, "storing offsets failed");
    }
}

/// Pauses the partitions stuck full and resumes those that drained; returns whether any
/// stays paused.
fn regulate(consumer: &GroupConsumer, limits: Limits) -> bool {
    let context = consumer.context();
    let flow =
        context
            .acks
            .tracker
            .flow(limits.unsettled, limits.span, STUCK_AFTER, Instant::now());
    if !flow.pause.is_empty() {
        match list(&flow.pause).and_then(|tpl| consumer.pause(&tpl)) {
            Ok(()) => {
                tracing::debug!(group = %context.group, partitions = ?flow.pause, "paused: too many messages unsettled")
            }
            Err(error) => {
                tracing::warn!(group = %context.group, %error, partitions = ?flow.pause, "could not pause partitions")
            }
        }
    }
    if !flow.resume.is_empty() {
        match list(&flow.resume).and_then(|tpl| consumer.resume(&tpl)) {
            Ok(()) => tracing::debug!(group = %context.group, partitions = ?flow.resume, "resumed"),
            Err(error) => {
                tracing::warn!(group = %context.group, %error, partitions = ?flow.resume, "could not resume partitions")
            }
        }
    }
    flow.paused
}

/// What wakes the polling thread: a queue of its client that stops being empty (librdkafka
/// calls back, from its own threads, under the queue's lock: this only takes a lock of
/// ours, never held while calling librdkafka).
#[derive(Default)]
struct Wake {
    raised: Mutex<bool>,
    changed: Condvar,
}

impl Wake {
    fn raise(&self) {
        *self.raised.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_one();
    }

    /// Sleeps until raised or `at_most` passed.
    fn wait(&self, at_most: Duration) {
        let mut raised = self.raised.lock().unwrap_or_else(PoisonError::into_inner);
        if !*raised {
            raised = self
                .changed
                .wait_timeout(raised, at_most)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *raised = false;
    }
}

/// Whether an error the consumer returns ends it: librdkafka gives up (a fatal error)
/// rather than retrying by itself.
fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::MessageConsumptionFatal(_))
}

/// The polling thread: polls until told to stop (or the async side is gone), handing each
/// round's records over, storing acknowledged offsets and pausing or resuming partitions in
/// between. Then it stores and commits what was acknowledged and leaves the group (the
/// revocation's callback runs here too); `left` gets the commit's outcome once it has left,
/// or at once for a dead client, whose destruction librdkafka may hold up for long (seen:
/// until the cluster went away) and which leaves no group that its replacement waits on.
fn poll_until_stopped(
    consumer: Arc<GroupConsumer>,
    wake: Arc<Wake>,
    names: &TopicNames,
    limits: Limits,
    out: &mpsc::UnboundedSender<Fetched>,
    stop: &AtomicBool,
    left: oneshot::Sender<KafkaResult<()>>,
) {
    let mut round = Round {
        consumer: &consumer,
        wake,
        queues: Vec::new(),
        names,
        limits,
        out,
        messages: Received::default(),
        fatal_reported: false,
    };
    while !stop.load(Ordering::Acquire) {
        // A panic in a callback (a log subscriber's, say) must not end the member.
        match std::panic::catch_unwind(AssertUnwindSafe(|| round.run())) {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => tracing::error!("a Kafka consumer callback panicked; polling on"),
        }
    }
    // The partition queues hold the client too: they go first.
    drop(round);
    store_acknowledged(&consumer);
    let committed = commit_stored(&*consumer);
    if consumer.context().dead.get().is_some() {
        let _ = left.send(committed);
        drop(consumer);
    } else {
        drop(consumer);
        let _ = left.send(committed);
    }
}

/// A partition's own queue (`split_partition_queue`): its records are read only while it
/// has room, and the client's main queue serves the group's events meanwhile.
type PartitionQueue = rdkafka::consumer::base_consumer::PartitionQueue<GroupContext>;

/// One round of the polling thread, and what it keeps from one to the next.
struct Round<'a> {
    consumer: &'a Arc<GroupConsumer>,
    wake: Arc<Wake>,
    /// A queue per assigned partition.
    queues: Vec<(String, i32, PartitionQueue)>,
    names: &'a TopicNames,
    limits: Limits,
    out: &'a mpsc::UnboundedSender<Fetched>,
    messages: Received,
    fatal_reported: bool,
}

impl Round<'_> {
    /// Stores, regulates and probes; serves the group's events; reads the partitions that
    /// have room, and hands over what came; sleeps if nothing did. `false` once the async
    /// side is gone.
    fn run(&mut self) -> bool {
        let consumer = self.consumer;
        let context = consumer.context();
        store_acknowledged(consumer);
        let paused = regulate(consumer, self.limits);
        if context.probe_due(Instant::now()) {
            context.probe(consumer);
        }
        let mut batch = Vec::new();
        let mut progressed = self.serve_main(&mut batch);
        if context.rebalanced.swap(false, Ordering::AcqRel) {
            // What came before the rebalance is handed over first (`deliver` drops what it
            // holds of revoked partitions); then each assigned partition gets its queue,
            // and what was fetched before that (on the main queue) comes first.
            if !self.hand_over(&mut batch) {
                return false;
            }
            self.split();
            self.serve_main(&mut batch);
            progressed = true;
        }
        let mut full = false;
        let mut errors = Vec::new();
        let tracker = &context.acks.tracker;
        for (topic, partition, queue) in &self.queues {
            let room = tracker
                .room(topic, *partition, self.limits.unsettled, self.limits.span)
                .unwrap_or(0)
                .min(BATCH);
            let mut taken = 0;
            while taken < room {
                match queue.poll(Duration::ZERO) {
                    Some(Ok(record)) => {
                        batch.push(self.messages.make(&record, self.names));
                        taken += 1;
                    }
                    Some(Err(error)) => {
                        errors.push(error);
                        break;
                    }
                    None => break,
                }
            }
            full |= taken == room;
        }
        for error in errors {
            self.failed(error);
        }
        progressed |= !batch.is_empty();
        if !self.hand_over(&mut batch) {
            return false;
        }
        self.report_death();
        if !progressed {
            self.wake.wait(if full {
                FULL_POLL_WAIT
            } else if paused {
                PAUSED_POLL_WAIT
            } else {
                POLL_WAIT
            });
        }
        true
    }

    /// Serves what the main queue holds: the group's events, and records of partitions
    /// not split off yet. Stops at a rebalance. Whether anything came.
    fn serve_main(&mut self, batch: &mut Vec<Arc<Message>>) -> bool {
        let consumer = self.consumer;
        let mut came = false;
        // `poll` answers `None` for an event it served as well as for an empty queue: two
        // in a row mean empty.
        let mut nones = 0;
        while nones < 2 && batch.len() < BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(record)) => {
                    batch.push(self.messages.make(&record, self.names));
                    (came, nones) = (true, 0);
                }
                Some(Err(error)) => {
                    self.failed(error);
                    (came, nones) = (true, 0);
                }
                None => nones += 1,
            }
            if consumer.context().rebalanced.load(Ordering::Acquire) {
                return true;
            }
        }
        came
    }

    /// An error librdkafka returned in place of a record: logged (rate-limited) and reported
    /// by the error callback already, and retried by librdkafka, unless it is fatal.
    fn failed(&mut self, error: KafkaError) {
        if is_fatal(&error) {
            self.consumer.context().mark_dead(error);
        }
    }

    /// Tells the async side, once, that the client is dead (after what was fetched before).
    fn report_death(&mut self) {
        let context = self.consumer.context();
        let Some(why) = context.dead.get() else {
            return;
        };
        if self.fatal_reported {
            return;
        }
        self.fatal_reported = true;
        // librdkafka's own account names the cause (the callback may only say "fatal").
        let why = match self.consumer.client().fatal_error() {
            Some((code, reason)) => format!("{code}: {reason}"),
            None => why.clone(),
        };
        let _ = self.out.send(Err(BrokerError::client_dead(NAME, why)));
    }

    /// Gives each assigned partition a queue of its own (an assignment undoes the last).
    fn split(&mut self) {
        // Dropped first: a queue's callback is set on librdkafka's queue, which the new
        // handle shares.
        self.queues.clear();
        for (topic, partition) in self.consumer.context().acks.tracker.assigned() {
            let Some(mut queue) = self.consumer.split_partition_queue(&topic, partition) else {
                tracing::warn!(%topic, partition, "no queue of its own; its records come on the main queue");
                continue;
            };
            let wake = Arc::clone(&self.wake);
            queue.set_nonempty_callback(move || wake.raise());
            self.queues.push((topic, partition, queue));
        }
    }

    /// Records the batch as delivered and hands it over; `false` once the async side is
    /// gone.
    fn hand_over(&mut self, batch: &mut Vec<Arc<Message>>) -> bool {
        let context = self.consumer.context();
        let generation = context.acks.tracker.deliver(batch);
        if batch.is_empty() {
            return true;
        }
        context.untroubled();
        self.out
            .send(Ok((generation, std::mem::take(batch))))
            .is_ok()
    }
}

/// The polling thread's handle: stops it when dropped.
struct Poller {
    stop: Arc<AtomicBool>,
    /// The thread's outcome (the last commit), once it has left the group.
    left: Option<oneshot::Receiver<KafkaResult<()>>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A subscribed member of a group.
pub(crate) struct KafkaConsumer {
    /// `None` once closed.
    poller: Option<Poller>,
    fetched: mpsc::UnboundedReceiver<Fetched>,
    acks: Arc<Acks>,
    acker: Arc<KafkaAcker>,
    /// Received and not handed out yet (more than a `next_batch` asked for).
    buffered: VecDeque<Arc<Message>>,
    /// Pending until the first assignment (shared with the context, which sets it).
    readiness: Readiness,
}

impl KafkaConsumer {
    /// Starts the polling thread and waits (up to `timeout`) until the group has assigned
    /// this member its partitions, so that the positions are set when `subscribe` returns.
    /// Messages that arrive meanwhile wait in the channel for `next_batch`.
    pub(crate) async fn joined(
        consumer: GroupConsumer,
        names: TopicNames,
        limits: Limits,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let mut consumer = consumer;
        let wake = Arc::new(Wake::default());
        consumer.set_nonempty_callback({
            let wake = Arc::clone(&wake);
            move || wake.raise()
        });
        let consumer = Arc::new(consumer);
        let context = consumer.context();
        // Acknowledgements wake the thread when a partition it left full has room again.
        context.acks.tracker.on_room({
            let wake = Arc::clone(&wake);
            move || wake.raise()
        });
        let group = context.group.clone();
        let acks = Arc::clone(&context.acks);
        let readiness = context.readiness.clone();
        let mut assignments = context.assignments.subscribe();
        let (out, fetched) = mpsc::unbounded_channel();
        let (left_tx, left) = oneshot::channel();
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("kafka-consumer".to_owned())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    poll_until_stopped(consumer, wake, &names, limits, &out, &stop, left_tx);
                }
            })
            .map_err(|e| operation("start the polling thread", e))?;
        let joined = tokio::time::timeout(timeout, assignments.wait_for(|n| *n > 0)).await;
        if joined.is_err() {
            tracing::warn!(%group, ?timeout, "no partitions assigned yet; consuming as soon as they are");
        }
        Ok(Self {
            poller: Some(Poller {
                stop,
                left: Some(left),
            }),
            fetched,
            acker: Arc::new(KafkaAcker {
                acks: Arc::clone(&acks),
            }),
            acks,
            buffered: VecDeque::new(),
            readiness,
        })
    }
}

impl Consumer for KafkaConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(async move {
            let max = max.max(1);
            loop {
                if !self.buffered.is_empty() {
                    let n = max.min(self.buffered.len());
                    return Ok(self.buffered.drain(..n).collect());
                }
                if self.poller.is_none() {
                    return Err(BrokerError::Closed { broker: NAME });
                }
                // Cancel-safe: a batch is taken from the channel only when it is returned
                // or kept in `buffered`.
                let (generation, mut batch) = match self.fetched.recv().await {
                    Some(fetched) => fetched?,
                    None => return Err(BrokerError::Closed { broker: NAME }),
                };
                self.acks.tracker.still_owned(generation, &mut batch);
                if batch.len() <= max {
                    if batch.is_empty() {
                        continue;
                    }
                    return Ok(batch);
                }
                self.buffered.extend(batch);
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
        self.acks.closed.store(true, Ordering::SeqCst);
        let left = self.poller.as_mut().and_then(|p| p.left.take());
        // Dropping the handle tells the thread to stop: it stores, commits and leaves.
        drop(self.poller.take());
        Box::pin(async move {
            let Some(left) = left else {
                return Ok(());
            };
            left.await
                .map_err(|e| operation("close", e))?
                .map_err(|e| from_kafka("commit", e))
        })
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // The polling thread stops (dropping the poller), stores what was acknowledged,
        // commits and leaves the group, on its own.
        self.acks.closed.store(true, Ordering::SeqCst);
    }
}

/// Records acknowledgements for the polling thread to store.
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
        Box::pin(std::future::ready(self.record(message)))
    }

    // Offsets are recorded in memory and committed by the polling thread: nothing to wait for.
    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(self.record_all(messages)))
    }
}

impl KafkaAcker {
    /// Records `messages` as handled under one lock; a message that is not Kafka's is
    /// reported, as `ack` would.
    fn record_all(&self, messages: &[Arc<Message>]) -> Result<(), BrokerError> {
        self.open()?;
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
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Arc<Message> {
        Arc::new(Message::new("t", "").with_position(Position::Partition { partition, offset }))
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
        let outcome = acker.record_all(&[at(0, 10), foreign, at(0, 11)]);
        let error = outcome.expect_err("not a Kafka position");
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
            acker.record_all(&[at(0, 12)]),
            Err(BrokerError::Closed { .. })
        ));
    }
}
