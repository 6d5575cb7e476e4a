//! The per-group pipeline: route each delivered message to its handler, run it with the retry
//! policy, dead-letter what still fails, and acknowledge only after success or after the DLQ
//! record was acknowledged. Order is kept per key (topic and key; on Kafka, the key within its
//! partition; without a key, the partition or the topic): a message in back-off holds back
//! only the later messages of its key, and the fetch never waits on one busy key
//! ([`Scheduler`]).

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use futures::future::Either;
use smallvec::SmallVec;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::broker::{Acker, Broker, ConnectionState, Consumer, Readiness};
use crate::dlq::{
    DeadLetterRecord, FirstFailure, OriginalMessage, RECORD_VERSION, RecordedError, replays_of,
};
use crate::envelope::{EnvelopeFields, event_name};
use crate::error::{FailureKind, HandlerError};
use crate::extract::Context;
use crate::handler::{BoxFuture, Invocation};
use crate::message::{Message, header};
use crate::metrics::{HandlerMetrics, LaneCounters, metrics};
use crate::registry::HandlerSpec;
use crate::trace;

/// One handler on one topic, with its counters.
pub(crate) struct Target {
    pub spec: Arc<HandlerSpec>,
    pub dlq_topic: String,
    pub metrics: Arc<HandlerMetrics>,
    /// For an idempotent handler: where its keys are kept.
    pub idempotency: Option<Arc<crate::idempotency::Guard>>,
}

#[derive(Clone)]
pub(crate) enum Route {
    Single(Arc<Target>),
    ByEvent {
        envelope: EnvelopeFields,
        targets: HashMap<String, Arc<Target>>,
    },
}

impl Route {
    /// Every handler of the route.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        let (single, by_event) = match self {
            Route::Single(target) => (Some(target), None),
            Route::ByEvent { targets, .. } => (None, Some(targets.values())),
        };
        single.into_iter().chain(by_event.into_iter().flatten())
    }
}

pub(crate) struct Dispatcher {
    pub group: String,
    /// By topic. A group reads a handful of topics: a scan comparing lengths first beats
    /// hashing the topic of every message.
    pub routes: Vec<(String, Route)>,
    pub context: Arc<Context>,
    pub broker: Arc<dyn Broker>,
    pub acker: Arc<dyn Acker>,
    pub source: String,
    pub concurrency: usize,
    pub batch_size: usize,
    pub max_message_size: usize,
    pub shutdown: CancellationToken,
    /// Set once `shutdown` is cancelled; read before each message. (`is_cancelled` takes a
    /// lock, which costs more than the rest of the bookkeeping of a message.)
    pub stopping: AtomicBool,
    /// Fetch failures and successes are reported here, for `/health`.
    pub connection: Arc<ConnectionState>,
    /// This group member's readiness: failing fetches and DLQ writes are reported here, for
    /// `/health/ready`.
    pub readiness: Readiness,
    /// Times handler attempts: real time, not Tokio's (which may be paused in tests), read
    /// from the CPU's time-stamp counter where that is reliable. Two `std::time::Instant`
    /// reads cost more than the rest of the framework's work on a message (BENCHMARKS.md).
    pub clock: quanta::Clock,
}

/// Why a dispatcher stopped.
pub(crate) enum Stopped {
    /// Shutdown began.
    Shutdown,
    /// The consumer's client reported itself unusable ([`crate::error::BrokerError::ClientDead`], logged
    /// and reported on the readiness): the caller subscribes again.
    Dead,
}

/// How long a dispatcher whose consumer died waits at most for its handlers in flight
/// before it is replaced (their messages are redelivered to the new consumer).
const DEAD_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl PendingAcks {
    /// Keeps a handled message for the batch; `true` when the batch is due.
    fn gather(&mut self, message: Arc<Message>, now: u64, clock: &quanta::Clock) -> bool {
        if self.messages.is_empty() {
            self.since = now;
        }
        self.messages.push(message);
        self.messages.len() >= ACK_BATCH || clock.delta(self.since, now) >= ACK_DELAY
    }
}

/// How many handled messages a lane gathers before acknowledging them together.
const ACK_BATCH: usize = 64;

/// How long a handled message may wait for the acknowledgement of its batch.
const ACK_DELAY: Duration = Duration::from_millis(1);

/// Messages a lane handled and has not acknowledged yet, acknowledged together with one
/// [`Acker::ack_batch`]: one lock or client call per batch instead of one per message.
/// Acknowledged at the end of the lane's run of messages, before a handler has to
/// wait (its future was not ready when first polled), before a failure is retried or
/// dead-lettered, and once [`ACK_BATCH`] are gathered or the first has waited [`ACK_DELAY`].
/// So batches form only while handlers finish at once; a crash meanwhile only means these
/// are delivered again (at least once).
pub(crate) struct PendingAcks {
    messages: Vec<Arc<Message>>,
    /// When the first of `messages` was handled, on the dispatcher's clock.
    since: u64,
    /// When the lane last finished with a message or began its run, on the dispatcher's
    /// clock: the start of the next first attempt. One clock read per message then times
    /// both the handler (with the framework's dispatch of the message, well under a
    /// microsecond) and the acknowledgement batch; a read costs about as much as the rest
    /// of the framework's bookkeeping of a message (BENCHMARKS.md).
    mark: u64,
}

/// The process's handler clock; calibrating one takes a few milliseconds, so it is made once.
pub(crate) fn handler_clock() -> quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new).clone()
}

/// A task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the fetching task, the workers and the retries meet. A key is busy from the moment
/// one of its messages is handed out until it is settled; messages of a busy key wait behind
/// it in arrival order, and are handed out as one run when it is done.
struct Scheduler {
    /// Busy keys, each with the messages waiting behind the one being handled.
    keys: Mutex<HashMap<u64, VecDeque<Arc<Message>>, BuildHasherDefault<KeyHasher>>>,
    /// Runs ready to be handled, each of one key, in the order they became ready.
    runs: Mutex<VecDeque<Run>>,
    /// One permit per run in `runs`.
    available: Semaphore,
    /// Messages fetched and not yet settled may not exceed the window: past it, fetching
    /// waits (a key with a long back-off and many messages behind it fills it alone).
    room: Semaphore,
    /// Retries handed to the fetching task, which owns every task of the dispatcher.
    retries: mpsc::UnboundedSender<BoxFuture<'static, ()>>,
}

/// Messages of one key, in order; usually one.
struct Run {
    key: u64,
    messages: SmallVec<[Arc<Message>; 1]>,
}

/// Hashes an ordering key, already a well-mixed hash, as itself.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// A message that must wait before its next attempt: its first attempt failed and will be
/// retried, or it came from a retry topic before its due time. The wait leaves the worker, so
/// that only its key waits.
struct Failed {
    target: Arc<Target>,
    /// The failure to retry; `None` for a message that has not been attempted yet.
    error: Option<HandlerError>,
    attempt: u32,
    traced: bool,
    /// How long it waits for its due time before `attempt` is made.
    wait: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Scheduler {
    /// Makes each message of a fetched batch ready, or queues it behind its busy key (also
    /// behind an earlier message of the same batch: [`Scheduler::finish`] then hands the key's
    /// queue out as one run).
    fn admit(&self, batch: Vec<Arc<Message>>) {
        let mut ready: Vec<Run> = Vec::new();
        {
            let mut keys = lock(&self.keys);
            for message in batch {
                let key = message.ordering_key();
                match keys.entry(key) {
                    Entry::Occupied(mut waiting) => waiting.get_mut().push_back(message),
                    Entry::Vacant(slot) => {
                        slot.insert(VecDeque::new());
                        ready.push(Run {
                            key,
                            messages: smallvec::smallvec![message],
                        });
                    }
                }
            }
        }
        self.push(ready);
    }

    fn push(&self, ready: Vec<Run>) {
        if ready.is_empty() {
            return;
        }
        let n = ready.len();
        lock(&self.runs).extend(ready);
        self.available.add_permits(n);
    }

    /// Ready runs for one of `workers`, taken at once: a fair share of what is ready, at
    /// least one and at most 64. Empty when none is ready.
    fn take_runs(&self, workers: usize, into: &mut Vec<Run>) {
        let share = (self.available.available_permits() / workers.max(1)).clamp(1, 64);
        let Ok(permits) = self.available.try_acquire_many(share as u32) else {
            return self.take_one(into);
        };
        permits.forget();
        let mut runs = lock(&self.runs);
        let taken = share.min(runs.len());
        into.extend(runs.drain(..taken));
    }

    fn take_one(&self, into: &mut Vec<Run>) {
        if let Ok(permit) = self.available.try_acquire() {
            permit.forget();
            into.extend(lock(&self.runs).pop_front());
        }
    }

    /// Waits for a ready run; `None` once `shutdown` is cancelled.
    async fn next_run(&self, shutdown: &CancellationToken) -> Option<Run> {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            permit = self.available.acquire() => {
                permit.ok()?.forget();
                lock(&self.runs).pop_front()
            }
        }
    }

    /// `key`'s run is done: what waits behind it becomes the key's next run, and `rest`
    /// (what a retried message held back of its own run) goes first.
    fn finish(&self, key: u64, rest: Vec<Arc<Message>>) {
        let next = {
            let mut keys = lock(&self.keys);
            match keys.get_mut(&key) {
                Some(waiting) if !waiting.is_empty() || !rest.is_empty() => {
                    let mut messages = SmallVec::from_vec(rest);
                    messages.extend(waiting.drain(..));
                    Some(Run { key, messages })
                }
                _ => {
                    keys.remove(&key);
                    None
                }
            }
        };
        self.push(next.into_iter().collect());
    }
}

/// Why a message was acknowledged without a handler.
enum Skip {
    UnknownTopic,
    UnknownEvent,
    NoEventName,
}

impl Skip {
    fn reason(&self) -> &'static str {
        match self {
            Self::UnknownTopic => "unknown_topic",
            Self::UnknownEvent => "unknown_event",
            Self::NoEventName => "no_event_name",
        }
    }
}

impl Dispatcher {
    /// Fetches and dispatches until shutdown or until the consumer's client dies, then
    /// closes the consumer. `shutdown` may be a child of the runtime's token: a dead
    /// consumer cancels it, so that its workers and retries stop as they would on shutdown.
    pub async fn run(self: Arc<Self>, mut consumer: Box<dyn Consumer>) -> Stopped {
        // Aborted with this future, also when the runtime is dropped without a shutdown.
        let _watcher = AbortOnDrop(tokio::spawn({
            let (token, this) = (self.shutdown.clone(), Arc::downgrade(&self));
            async move {
                token.cancelled().await;
                if let Some(this) = this.upgrade() {
                    this.stopping.store(true, Relaxed);
                }
            }
        }));
        let stopped = self.run_workers(&mut *consumer).await;
        let closing = consumer.close();
        let closed = match stopped {
            Stopped::Shutdown => Some(closing.await),
            // A dead client may not answer: its replacement does not wait on it for long.
            Stopped::Dead => tokio::time::timeout(DEAD_DRAIN_TIMEOUT, closing).await.ok(),
        };
        match closed {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::warn!(group = %self.group, %error, "closing the consumer failed")
            }
            None => {
                tracing::warn!(group = %self.group, timeout = ?DEAD_DRAIN_TIMEOUT, "the dead consumer did not close in time; replacing it all the same")
            }
        }
        stopped
    }

    async fn next_batch(
        &self,
        consumer: &mut dyn Consumer,
        failures: &mut u32,
    ) -> Result<Vec<Arc<Message>>, Stopped> {
        loop {
            let batch = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(Stopped::Shutdown),
                batch = consumer.next_batch(self.batch_size) => batch,
            };
            match batch {
                Ok(batch) => {
                    if *failures > 0 {
                        tracing::info!(group = %self.group, "fetching again after {failures} failures");
                        self.connection.set_connected(true);
                        self.readiness.clear("fetch");
                    }
                    *failures = 0;
                    return Ok(batch);
                }
                Err(error) if error.is_dead() => {
                    // Retrying on this client cannot help: stop this consumer's work (its
                    // unacknowledged messages are redelivered) and let the caller replace it.
                    tracing::error!(group = %self.group, %error, "the consumer's client is unusable; replacing it");
                    self.readiness.set_ready(false);
                    self.readiness.report("consumer", &error);
                    self.shutdown.cancel();
                    return Err(Stopped::Dead);
                }
                Err(error) => {
                    *failures += 1;
                    self.connection.set_connected(false);
                    self.connection.record_failure();
                    self.readiness.report("fetch", &error);
                    let wait = Duration::from_millis(100 * 2u64.pow((*failures).min(8)))
                        .min(Duration::from_secs(30));
                    tracing::warn!(group = %self.group, %error, ?wait, "fetching failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Err(Stopped::Shutdown),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Whether shutdown began: exact at the start of a run of messages, and within one as
    /// soon as the watcher in [`Dispatcher::run`] saw it.
    fn stopping(&self, run_start: bool) -> bool {
        self.stopping.load(Relaxed) || (run_start && self.shutdown.is_cancelled())
    }

    /// A lane's invocation. Its context is set once; each message is moved in for its
    /// attempts and out again, so that no `Arc` is cloned per attempt (see
    /// [`crate::handler::HandlerFn`]).
    fn invocation(&self) -> Invocation {
        Invocation {
            message: Arc::default(),
            context: Arc::clone(&self.context),
            attempt: 0,
            handler: "",
        }
    }

    fn pending_acks(&self) -> PendingAcks {
        PendingAcks {
            messages: Vec::new(),
            since: 0,
            mark: 0,
        }
    }

    /// Handles a run of one key's messages in order and acknowledges them. A message whose
    /// first attempt fails and will be retried leaves with the rest of the run for a retry
    /// task of its own, and the key stays busy until that is done. `false` when shutdown
    /// began (the rest of the run is left unacknowledged, for redelivery).
    async fn handle_run(
        self: &Arc<Self>,
        scheduler: &Arc<Scheduler>,
        run: Run,
        lane: usize,
        acks: &mut PendingAcks,
        invocation: &mut Invocation,
    ) -> bool {
        acks.mark = self.clock.raw();
        let Run { key, messages } = run;
        let mut messages = messages.into_iter();
        let mut first = true;
        while let Some(message) = messages.next() {
            if self.stopping(first) {
                self.flush_acks(acks).await;
                return false;
            }
            first = false;
            let Some(failed) = self.process(message, lane, acks, invocation).await else {
                scheduler.room.add_permits(1);
                continue;
            };
            // Its retries wait outside the worker; the rest of its key waits for them.
            let message = std::mem::take(&mut invocation.message);
            let retry = Arc::clone(self).retry(
                Arc::clone(scheduler),
                key,
                message,
                failed,
                messages.collect(),
            );
            if scheduler.retries.send(Box::pin(retry)).is_err() {
                return false;
            }
            return true;
        }
        // Acknowledged with the worker's batch; the key's next message may go first.
        scheduler.finish(key, Vec::new());
        true
    }

    /// Retries a failed message with its handler's back-off (or dead-letters it), then hands
    /// the rest of its key back to the workers.
    async fn retry(
        self: Arc<Self>,
        scheduler: Arc<Scheduler>,
        key: u64,
        message: Arc<Message>,
        failed: Failed,
        rest: Vec<Arc<Message>>,
    ) {
        let mut invocation = self.invocation();
        invocation.message = message;
        invocation.handler = failed.target.spec.name;
        // Retries of one worker may run at once: they count on the shared lane.
        let on = Attempting {
            target: &failed.target,
            counters: failed.target.metrics.shared_lane(),
            traced: failed.traced,
        };
        let error = match failed.error {
            Some(error) => Some(error),
            None => {
                tokio::select! {
                    biased;
                    // Not acknowledged: it waits in its retry topic for the next start.
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(failed.wait) => {}
                }
                match self
                    .attempt(&on, &mut invocation, failed.attempt, None)
                    .await
                {
                    Ok(()) => {
                        self.handled(&on, &invocation.message, failed.attempt, self.clock.raw());
                        self.ack(&invocation.message).await;
                        None
                    }
                    Err(error) => Some(error),
                }
            }
        };
        if let Some(error) = error {
            self.after_failure(&on, &mut invocation, error, failed.attempt)
                .await;
        }
        scheduler.room.add_permits(1);
        if !self.stopping(true) {
            scheduler.finish(key, rest);
        }
    }

    /// Fetches and hands each batch's messages to `concurrency` workers by key, until
    /// shutdown (or the consumer's death); then waits for the workers and the retries.
    async fn run_workers(self: &Arc<Self>, consumer: &mut dyn Consumer) -> Stopped {
        let window = (4 * self.batch_size).max(64 * self.concurrency);
        let (retries, mut retry_rx) = mpsc::unbounded_channel::<BoxFuture<'static, ()>>();
        let scheduler = Arc::new(Scheduler {
            keys: Mutex::default(),
            runs: Mutex::default(),
            available: Semaphore::new(0),
            room: Semaphore::new(window),
            retries,
        });
        // Owned here, so that aborting the dispatcher (shutdown timeout) aborts its workers
        // and retries too.
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..self.concurrency {
            let (this, scheduler) = (Arc::clone(self), Arc::clone(&scheduler));
            let workers = self.concurrency;
            tasks.spawn(async move {
                let (mut acks, mut invocation) = (this.pending_acks(), this.invocation());
                let mut runs = Vec::new();
                loop {
                    scheduler.take_runs(workers, &mut runs);
                    if runs.is_empty() {
                        // Nothing ready: what was handled is acknowledged before waiting.
                        this.flush_acks(&mut acks).await;
                        let Some(run) = scheduler.next_run(&this.shutdown).await else {
                            return;
                        };
                        runs.push(run);
                    }
                    for run in runs.drain(..) {
                        if !this
                            .handle_run(&scheduler, run, lane, &mut acks, &mut invocation)
                            .await
                        {
                            return;
                        }
                    }
                }
            });
        }
        let mut failures = 0;
        let mut stopped = Stopped::Shutdown;
        'fetch: loop {
            let wanted = self.batch_size.min(window) as u32;
            let room = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break 'fetch,
                Some(retry) = retry_rx.recv() => {
                    tasks.spawn(retry);
                    while tasks.try_join_next().is_some() {}
                    continue 'fetch;
                }
                room = scheduler.room.acquire_many(wanted) => match room {
                    Ok(room) => room,
                    Err(_) => break 'fetch,
                },
            };
            let batch = loop {
                tokio::select! {
                    biased;
                    Some(retry) = retry_rx.recv() => {
                        tasks.spawn(retry);
                        while tasks.try_join_next().is_some() {}
                    }
                    batch = self.next_batch(consumer, &mut failures) => break batch,
                }
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(why) => {
                    stopped = why;
                    break 'fetch;
                }
            };
            // Held until each message is settled; what the batch did not use goes back.
            room.forget();
            scheduler
                .room
                .add_permits((wanted as usize).saturating_sub(batch.len()));
            scheduler.admit(batch);
        }
        // Retries still arriving are spawned (they end at once on shutdown) and awaited.
        retry_rx.close();
        while let Some(retry) = retry_rx.recv().await {
            tasks.spawn(retry);
        }
        // With the scheduler go the keys' queues: nothing is held for a consumer that
        // is gone.
        drop(scheduler);
        let drained = async { while tasks.join_next().await.is_some() {} };
        match stopped {
            Stopped::Shutdown => drained.await,
            Stopped::Dead => {
                if tokio::time::timeout(DEAD_DRAIN_TIMEOUT, drained)
                    .await
                    .is_err()
                {
                    // Their messages are redelivered to the next consumer.
                    tracing::warn!(group = %self.group, timeout = ?DEAD_DRAIN_TIMEOUT, "handlers still running on a dead consumer; abandoning them");
                    tasks.abort_all();
                }
            }
        }
        stopped
    }

    fn route(&self, message: &Message) -> Result<&Arc<Target>, Skip> {
        let route = self
            .routes
            .iter()
            .find(|(topic, _)| *topic == message.topic)
            .map(|(_, route)| route);
        match route.ok_or(Skip::UnknownTopic)? {
            Route::Single(target) => Ok(target),
            Route::ByEvent { envelope, targets } => {
                let name = event_name(message, envelope).ok_or(Skip::NoEventName)?;
                targets.get(&name).ok_or(Skip::UnknownEvent)
            }
        }
    }

    async fn ack(&self, message: &Message) {
        if let Err(error) = self.acker.ack(message).await {
            // Not acknowledged means delivered again later: at least once still holds.
            tracing::warn!(topic = %message.topic, position = %message.position, %error, "acknowledgement failed; the message may be redelivered");
        }
    }

    /// Acknowledges `message` with the lane's batch. `now` is the dispatcher's clock, read
    /// when the message was settled.
    async fn ack_soon(&self, message: Arc<Message>, now: u64, acks: &mut PendingAcks) {
        if acks.gather(message, now, &self.clock) {
            self.flush_acks(acks).await;
        }
    }

    /// Acknowledges what the lane gathered.
    async fn flush_acks(&self, acks: &mut PendingAcks) {
        if acks.messages.is_empty() {
            return;
        }
        if let Err(error) = self.acker.ack_batch(&acks.messages).await {
            // Not acknowledged means delivered again later: at least once still holds.
            tracing::warn!(group = %self.group, messages = acks.messages.len(), %error, "acknowledgement failed; the messages may be redelivered");
        }
        acks.messages.clear();
    }

    /// Handles one message to the end: acknowledged, dead-lettered, or left for redelivery
    /// when shutdown interrupts a back-off.
    ///
    /// The first attempt is the hot path and is kept small; what follows a failure (back-off,
    /// more attempts, the DLQ write) is a boxed future of its own, so that its state does not
    /// weigh on every message.
    ///
    /// `lane` picks the counters written: one lane handles one message at a time. A
    /// handled message joins the lane's `acks`; before a failure's slow path they are
    /// acknowledged, so that a back-off does not hold them.
    async fn process(
        &self,
        message: Arc<Message>,
        lane: usize,
        acks: &mut PendingAcks,
        invocation: &mut Invocation,
    ) -> Option<Failed> {
        let target = match self.route(&message) {
            Ok(target) => target,
            Err(skip) => {
                metrics().record_skipped(&message.topic, skip.reason());
                tracing::debug!(topic = %message.topic, reason = skip.reason(), "message skipped");
                acks.mark = self.clock.raw();
                self.ack_soon(message, acks.mark, acks).await;
                return None;
            }
        };
        let delivery = message.delivery_headers();
        // Saturating: the header may come from another program (`x-messaging-attempt: 4294967295`).
        let attempt = delivery.previous_attempts.saturating_add(1);
        let on = Attempting {
            target,
            counters: target.metrics.lane(lane),
            traced: delivery.traced,
        };
        if message.payload.len() > self.max_message_size {
            let error = HandlerError::new(
                FailureKind::TooLarge,
                format!(
                    "{} bytes exceed the maximum of {}",
                    message.payload.len(),
                    self.max_message_size
                ),
            );
            let now = Utc::now();
            self.flush_acks(acks).await;
            Box::pin(self.dead_letter(&on, &message, &error, attempt, now, now)).await;
            acks.mark = self.clock.raw();
            return None;
        }
        if delivery.deadline && past_deadline(&message) {
            // The requester has stopped waiting: nobody would read the reply.
            metrics().record_expired_request(&message.topic, target.spec.name);
            tracing::debug!(topic = %message.topic, handler = target.spec.name, "request past its deadline acknowledged unhandled");
            acks.mark = self.clock.raw();
            self.ack_soon(message, acks.mark, acks).await;
            return None;
        }
        if let Some(wait) = delivery.retry_due.then(|| not_yet_due(&message)).flatten() {
            invocation.message = message;
            return Some(Failed {
                target: Arc::clone(target),
                error: None,
                attempt,
                traced: delivery.traced,
                wait,
            });
        }
        let spare = std::mem::replace(&mut invocation.message, message);
        invocation.handler = target.spec.name;
        match self
            .attempt(&on, invocation, attempt, Some(&mut *acks))
            .await
        {
            Ok(()) => {
                // `run_attempt` left the attempt's end in `acks.mark`.
                self.handled(&on, &invocation.message, attempt, acks.mark);
                let message = std::mem::replace(&mut invocation.message, spare);
                // Not `ack_soon`: its future would be part of every message's. The clock
                // was read when the attempt ended.
                let now = acks.mark;
                if acks.gather(message, now, &self.clock) {
                    self.flush_acks(acks).await;
                }
                None
            }
            // Retried: the caller moves it (still in `invocation`) to a task of its own.
            Err(error)
                if error.is_retryable()
                    && attempt < target.spec.retry.max_attempts()
                    && !target.spec.retry_topics =>
            {
                acks.mark = self.clock.raw();
                let failed = Failed {
                    target: Arc::clone(target),
                    error: Some(error),
                    attempt,
                    traced: delivery.traced,
                    wait: Duration::ZERO,
                };
                // The failed message stays in `invocation` for the caller to take.
                drop(spare);
                Some(failed)
            }
            Err(error) => {
                self.flush_acks(acks).await;
                Box::pin(self.after_failure(&on, invocation, error, attempt)).await;
                invocation.message = spare;
                acks.mark = self.clock.raw();
                None
            }
        }
    }

    /// Counts a success; `ended` is when its attempt ended, on the dispatcher's clock.
    fn handled(&self, on: &Attempting<'_>, message: &Message, attempt: u32, ended: u64) {
        let target = on.target;
        on.counters.succeeded();
        on.counters.observe_end_to_end(message, &self.clock, ended);
        tracing::debug!(topic = %message.topic, handler = target.spec.name, attempt, "handled");
    }

    /// Retries with the handler's back-off until an attempt succeeds, the error is not
    /// retryable or the attempts are used up; then dead-letters.
    async fn after_failure(
        &self,
        on: &Attempting<'_>,
        invocation: &mut Invocation,
        mut error: HandlerError,
        mut attempt: u32,
    ) {
        let target = on.target;
        let policy = target.spec.retry;
        let first_failure = Utc::now();
        loop {
            if !(error.is_retryable() && attempt < policy.max_attempts()) {
                let now = Utc::now();
                self.dead_letter(on, &invocation.message, &error, attempt, first_failure, now)
                    .await;
                return;
            }
            let delay = policy.delay_before_retry(attempt);
            on.counters.retried();
            if target.spec.retry_topics {
                match self
                    .to_retry_topic(&invocation.message, attempt, delay, first_failure, &error)
                    .await
                {
                    Ok(()) => return self.ack(&invocation.message).await,
                    // Not lost: retried here instead.
                    Err(publish_error) => {
                        tracing::warn!(topic = %invocation.message.topic, error = %publish_error, "publishing to the retry topic failed; retrying in process");
                    }
                }
            }
            tracing::info!(topic = %invocation.message.topic, handler = target.spec.name, attempt, ?delay, %error, "attempt failed; retrying");
            tokio::select! {
                biased;
                // Not acknowledged: another instance (or the next start) gets it again.
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
            match self.attempt(on, invocation, attempt, None).await {
                Ok(()) => {
                    self.handled(on, &invocation.message, attempt, self.clock.raw());
                    return self.ack(&invocation.message).await;
                }
                Err(next) => error = next,
            }
        }
    }

    /// Moves a failed message to the retry topic of its attempt, due after `delay`; the
    /// caller acknowledges it once that is confirmed.
    async fn to_retry_topic(
        &self,
        message: &Message,
        attempt: u32,
        delay: Duration,
        first_failure_at: DateTime<Utc>,
        error: &HandlerError,
    ) -> Result<(), crate::error::BrokerError> {
        let original = message
            .header(header::ORIGINAL_TOPIC)
            .unwrap_or(&message.topic)
            .to_owned();
        let mut headers = message.headers.clone();
        headers.insert(header::ATTEMPT, attempt.to_string());
        let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        headers.insert(
            header::RETRY_DUE,
            due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        headers.insert(header::ORIGINAL_TOPIC, original.clone());
        if message.header(header::FIRST_FAILURE).is_none() {
            let first = FirstFailure {
                at: first_failure_at,
                error: RecordedError {
                    kind: error.kind(),
                    message: error.to_string(),
                },
            };
            headers.insert(
                header::FIRST_FAILURE,
                serde_json::to_string(&first).expect("a failure always serializes"),
            );
        }
        let out = crate::message::OutgoingMessage {
            topic: crate::registry::retry_topic(&original, attempt),
            key: message.key.clone(),
            payload: message.payload.clone(),
            headers,
        };
        tracing::info!(topic = %original, retry_topic = %out.topic, attempt, ?delay, %error, "attempt failed; retrying through the retry topic");
        self.broker.publish(out).await
    }

    /// One attempt; for an idempotent handler, guarded by its key ([`Dispatcher::attempt_once`]).
    async fn attempt(
        &self,
        on: &Attempting<'_>,
        invocation: &mut Invocation,
        attempt: u32,
        acks: Option<&mut PendingAcks>,
    ) -> Result<(), HandlerError> {
        match &on.target.idempotency {
            None => self.run_attempt(on, invocation, attempt, acks).await,
            // Boxed: its state stays out of every other handler's future.
            Some(guard) => Box::pin(self.attempt_once(guard, on, invocation, attempt, acks)).await,
        }
    }

    /// An idempotent handler's attempt: runs only when its key can be taken. A key already
    /// done makes the message a duplicate, acknowledged without running and counted; a key
    /// that another delivery holds is waited for (checked again with back-off), so that the
    /// two never run at once. Success marks the key done for the TTL, failure frees it so
    /// that the retry runs. A message with no key runs as usual.
    async fn attempt_once(
        &self,
        guard: &crate::idempotency::Guard,
        on: &Attempting<'_>,
        invocation: &mut Invocation,
        attempt: u32,
        mut acks: Option<&mut PendingAcks>,
    ) -> Result<(), HandlerError> {
        use crate::idempotency::{Begin, key_of, scoped};
        let Some(key) = key_of(&invocation.message).map(|k| scoped(&self.group, k)) else {
            return self.run_attempt(on, invocation, attempt, acks).await;
        };
        let store = &guard.store;
        let store_error = |e: crate::idempotency::IdempotencyError| {
            HandlerError::new(FailureKind::Handler, e.to_string())
        };
        // Unique to this attempt, so that only this attempt's release frees the key.
        let owner = uuid::Uuid::now_v7().to_string();
        let mut wait = Duration::from_millis(20);
        loop {
            match store
                .try_begin(&key, &owner, guard.lease)
                .await
                .map_err(store_error)?
            {
                Begin::Begun => break,
                Begin::Done => {
                    let message = &invocation.message;
                    metrics().record_duplicate(&message.topic, &self.group);
                    tracing::debug!(topic = %message.topic, handler = on.target.spec.name, group = %self.group, "duplicate acknowledged without running");
                    return Ok(());
                }
                Begin::InProgress => {
                    // Also through a shutdown: the other delivery ends within its lease, and
                    // the shutdown timeout aborts this one unacknowledged (for redelivery)
                    // otherwise. Failing here instead could dead-letter it. What the lane
                    // handled before is acknowledged first, as before a slow handler.
                    if let Some(acks) = acks.as_deref_mut() {
                        self.flush_acks(acks).await;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
        let outcome = guard
            .hold(
                &key,
                &owner,
                self.run_attempt(on, invocation, attempt, acks),
            )
            .await;
        let settled = match &outcome {
            Ok(()) => store.complete(&key, &owner, guard.ttl).await,
            Err(_) => store.release(&key, &owner).await,
        };
        if let Err(error) = settled {
            // The lease runs out on its own; until then a redelivery waits.
            tracing::warn!(topic = %invocation.message.topic, handler = on.target.spec.name, %error, "settling the idempotency key failed");
        }
        outcome
    }

    /// One attempt. When the handler has to wait (its future is not ready at once), the
    /// lane's gathered acknowledgements, if any, go out first: a slow handler never holds
    /// back those of the messages handled before it.
    async fn run_attempt(
        &self,
        on: &Attempting<'_>,
        invocation: &mut Invocation,
        attempt: u32,
        mut acks: Option<&mut PendingAcks>,
    ) -> Result<(), HandlerError> {
        invocation.attempt = attempt;
        let invocation = &*invocation;
        let (target, message) = (on.target, &invocation.message);
        let trace_id = if on.traced {
            message.header(header::TRACE_ID)
        } else {
            None
        };
        let traced = trace_id.map(|_| Arc::clone(message));
        // A first attempt starts where the lane's previous message ended; a retry reads
        // the clock (see `PendingAcks::mark`).
        let started = match &acks {
            Some(acks) => acks.mark,
            None => self.clock.raw(),
        };
        on.counters.attempted();
        let call = &target.spec.call;
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| call(invocation))) {
            Ok(future) => future,
            Err(panic) => return Err(panicked(panic)),
        };
        // One span per attempt; debug level, so it costs next to nothing unless enabled.
        let span = tracing::debug_span!(
            "message",
            topic = %message.topic,
            handler = target.spec.name,
            attempt,
            trace_id = trace_id.unwrap_or(""),
        );
        // Feature `otel`: a child of the publisher's span, when the message carries its context.
        trace::continue_trace(&span, message);
        let guarded = AssertUnwindSafe(future).catch_unwind();
        let limit = target.spec.retry.timeout;
        // The common cases kept free of boxing: nothing but (maybe) a trace id to put in
        // scope, no time limit, logs off.
        let mut running = std::pin::pin!(match (traced, limit.is_none() && span.is_disabled()) {
            (None, true) => Either::Left(guarded),
            (Some(message), true) =>
                Either::Right(Either::Left(trace::with_trace_of(Some(message), guarded))),
            (traced, _) => Either::Right(Either::Right(Box::pin(wrapped(
                guarded, span, traced, limit
            )))),
        });
        // The first poll is the one `.await` would make.
        let outcome = match futures::poll!(running.as_mut()) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => {
                if let Some(acks) = acks.as_deref_mut() {
                    self.flush_acks(acks).await;
                }
                running.await
            }
        };
        let ended = self.clock.raw();
        on.counters
            .observe_latency(self.clock.delta_as_nanos(started, ended));
        if let Some(acks) = acks {
            acks.mark = ended;
        }
        outcome.unwrap_or_else(|panic| Err(panicked(panic)))
    }

    /// Writes the DLQ record, waiting until the broker acknowledged it, then acknowledges the
    /// original. A failing DLQ write is retried with back-off; only shutdown stops that, and
    /// then the original stays unacknowledged.
    async fn dead_letter(
        &self,
        on: &Attempting<'_>,
        message: &Message,
        error: &HandlerError,
        attempts: u32,
        first_failure_at: DateTime<Utc>,
        last_failure_at: DateTime<Utc>,
    ) {
        let target = on.target;
        let limit = self.max_message_size.min(crate::dlq::MAX_RECORD_BYTES);
        // A replayed message that failed again keeps its first failure and counts replays.
        let first = FirstFailure::of(message);
        let first_failure_at = first.as_ref().map_or(first_failure_at, |f| f.at);
        let mut original = OriginalMessage::capture_within(message, limit);
        if let Some(topic) = message.header(header::ORIGINAL_TOPIC) {
            // From a retry topic: the record names the topic it was first published to.
            original.topic = topic.to_owned();
        }
        let record = DeadLetterRecord {
            version: RECORD_VERSION,
            original,
            error: RecordedError {
                kind: error.kind(),
                message: error.to_string(),
            },
            attempts,
            first_failure_at,
            last_failure_at,
            handler: target.spec.name.to_owned(),
            group: self.group.clone(),
            event_name: message
                .header(header::EVENT_NAME)
                .map(str::to_owned)
                .or_else(|| target.spec.event_name.clone()),
            source: self.source.clone(),
            trace_id: message.header(header::TRACE_ID).map(str::to_owned),
            dead_lettered_at: Utc::now(),
            id: Some(uuid::Uuid::now_v7().to_string()),
            replays: replays_of(message),
            first_error: first.map(|f| f.error),
        };
        let out = record.to_message_within(&target.dlq_topic, limit);
        let mut wait = Duration::from_millis(100);
        loop {
            match self.broker.publish(out.clone()).await {
                Ok(()) => {
                    self.readiness.clear("dlq");
                    break;
                }
                Err(publish_error) => {
                    self.readiness.report("dlq", &publish_error);
                    tracing::error!(dlq = %target.dlq_topic, error = %publish_error, ?wait, "writing the DLQ record failed; retrying before acknowledging");
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        on.counters.dead_lettered();
        tracing::warn!(topic = %message.topic, handler = target.spec.name, attempts, kind = %error.kind(), %error, dlq = %target.dlq_topic, "message dead-lettered");
        if let Some(address) = crate::reply::return_address(message) {
            // Told at once rather than left to time out; a lost error reply leaves the
            // requester to its timeout, as a lost request would.
            let reply = address.error_reply(&error.kind().to_string(), &error.to_string());
            if let Err(reply_error) = self.broker.publish_reply(reply).await {
                tracing::warn!(topic = %message.topic, reply_to = %address.to, error = %reply_error, "sending the error reply failed");
            }
        }
        self.ack(message).await;
    }
}

/// One message being attempted: its handler, the lane's counters and whether it carries a
/// trace id (looked up again by the attempts that need it: the message itself is in the
/// lane's [`Invocation`]).
struct Attempting<'a> {
    target: &'a Target,
    counters: &'a LaneCounters,
    traced: bool,
}

type Guarded = futures::future::CatchUnwind<AssertUnwindSafe<crate::handler::HandlerFuture>>;
type Outcome = Result<Result<(), HandlerError>, Box<dyn Any + Send>>;

/// An attempt inside its span, with the trace id in scope and the handler's time limit.
async fn wrapped(
    guarded: Guarded,
    span: tracing::Span,
    traced: Option<Arc<Message>>,
    limit: Option<Duration>,
) -> Outcome {
    let scoped = trace::with_trace_of(traced, guarded.instrument(span));
    let Some(limit) = limit else {
        return scoped.await;
    };
    tokio::time::timeout(limit, scoped)
        .await
        .unwrap_or_else(|_| {
            Ok(Err(HandlerError::new(
                FailureKind::Timeout,
                format!("handler did not finish within {limit:?}"),
            )))
        })
}

/// Whether a request's `x-deadline` has passed (a garbled one never has: the handler runs).
fn past_deadline(message: &Message) -> bool {
    message
        .header(header::DEADLINE)
        .and_then(|due| DateTime::parse_from_rfc3339(due).ok())
        .is_some_and(|due| due.with_timezone(&Utc) <= Utc::now())
}

/// How long a message from a retry topic still has to wait for its due time; `None` when it
/// is due (or is no such message).
fn not_yet_due(message: &Message) -> Option<Duration> {
    let due = message.header(header::RETRY_DUE)?;
    let due = DateTime::parse_from_rfc3339(due).ok()?.with_timezone(&Utc);
    (due - Utc::now())
        .to_std()
        .ok()
        .filter(|wait| !wait.is_zero())
}

fn panicked(panic: Box<dyn Any + Send>) -> HandlerError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "handler panicked".to_owned());
    HandlerError::new(FailureKind::Panic, format!("handler panicked: {text}"))
}
