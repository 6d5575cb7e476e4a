//! Publishing: [`Producer::send`] puts a message on the wire as it is, [`Producer::publish_event`]
//! wraps it in the envelope; both wait for the broker's acknowledgement. [`Producer::fire`] is
//! the background path of `#[event]`: it never fails the caller, counts what it drops, and is
//! waited for by [`Producer::flush`].
//!
//! Background publishes go through one bounded queue per producer (`MESSAGING_EVENT_QUEUE`
//! events queued, in flight or waiting to retry) and one task that publishes them, all at once
//! as a task per event did, so that a broker that is down holds at most the queue in memory
//! instead of a task per event.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;
use uuid::Uuid;

use crate::broker::{Broker, connect_once};
use crate::config::{Config, current_config};
use crate::envelope::{Event, TypedEvent};
use crate::error::{BrokerError, Error};
use crate::handler::BoxFuture;
use crate::message::{Headers, Key, OutgoingMessage, header};
use crate::metrics::{PublishedCounter, metrics};
use crate::trace;

/// How long a failing background publish is retried, counted from [`Producer::fire`]: a
/// broker restart is ridden out, an event older than this is dropped.
pub const RETRY_FOR: Duration = Duration::from_secs(120);

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// At most one warning line this often per kind (drops, failing publishes).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Publishes messages; cheap to clone. Obtain the process-wide one with [`get_producer`], or
/// take one as a handler argument.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    /// Held by producers only, not by the publishing task: once the last clone is gone the
    /// task publishes what is queued and ends.
    queue: Arc<Queue>,
}

/// What the producers and their publishing task share.
struct Inner {
    broker: OnceCell<Arc<dyn Broker>>,
    config: Config,
    /// Fired events not yet delivered or dropped.
    pending: AtomicUsize,
    settled: Notify,
    /// While a flush waits: when retries must have ended.
    flush_deadline: Mutex<Option<Instant>>,
    /// Wakes retries sleeping out a back-off when a flush begins.
    flushing: Notify,
    drops: Throttle,
    failures: Throttle,
    /// Whether the last publish attempt failed: events that waited past [`RETRY_FOR`] are
    /// then dropped without another attempt.
    failing: AtomicBool,
    /// The reply inbox of [`Producer::request`], opened at the first request.
    requests: crate::request::Requests,
}

struct Queue {
    /// `None` until the first fire; replaced when the task's runtime has gone. Unbounded:
    /// [`Producer::fire`] admits no more than the configured number of pending events.
    sender: RwLock<Option<mpsc::UnboundedSender<Queued>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("backend", &self.inner.config.backend)
            .field("connected", &self.inner.broker.initialized())
            .finish()
    }
}

/// Key and headers for [`Producer::send_with`]: `SendOptions::key("42").header("x", "1")`.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// The message key (Kafka partitioning; a header elsewhere): text or bytes.
    pub key: Option<Key>,
    /// Extra headers.
    pub headers: Headers,
}

impl SendOptions {
    /// Options with this key (text or bytes).
    pub fn key(key: impl Into<Key>) -> Self {
        Self {
            key: Some(key.into()),
            headers: Headers::new(),
        }
    }

    /// Adds a header (its value text or bytes).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the idempotency key (the `x-idempotency-key` header): an idempotent handler
    /// runs at most once per key and group, so that a publisher's retry is not handled
    /// twice.
    pub fn idempotency_key(self, key: impl Into<String>) -> Self {
        self.header(header::IDEMPOTENCY_KEY, key.into())
    }
}

impl Producer {
    /// A producer on an already connected broker.
    pub fn new(broker: Arc<dyn Broker>, config: Config) -> Self {
        let producer = Self::lazy(config);
        let _ = producer.inner.broker.set(broker);
        producer
    }

    /// A producer that connects to the configured broker on first use.
    pub fn lazy(config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker: OnceCell::new(),
                config,
                pending: AtomicUsize::new(0),
                settled: Notify::new(),
                flush_deadline: Mutex::new(None),
                flushing: Notify::new(),
                drops: Throttle::default(),
                failures: Throttle::default(),
                failing: AtomicBool::new(false),
                requests: crate::request::Requests::default(),
            }),
            queue: Arc::new(Queue {
                sender: RwLock::new(None),
            }),
        }
    }

    /// The broker, connecting on first use.
    pub async fn broker(&self) -> Result<&Arc<dyn Broker>, Error> {
        self.inner.broker().await
    }

    /// The configuration it was made with.
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn requests(&self) -> &crate::request::Requests {
        &self.inner.requests
    }

    /// The service name written into envelopes.
    pub fn source(&self) -> &str {
        &self.inner.config.source
    }

    /// Publishes `message` as JSON, without an envelope, and waits for the acknowledgement.
    pub async fn send<T: Serialize + ?Sized>(&self, topic: &str, message: &T) -> Result<(), Error> {
        self.send_with(topic, message, SendOptions::default()).await
    }

    /// [`Producer::send`] with a key and headers.
    pub async fn send_with<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
        options: SendOptions,
    ) -> Result<(), Error> {
        let payload = serde_json::to_vec(message)?;
        let mut out = OutgoingMessage::new(topic, payload);
        out.key = options.key;
        out.headers = options.headers;
        if let Some(trace) = trace::current()
            && !out.headers.contains_key(header::TRACE_ID)
        {
            out.headers.insert(header::TRACE_ID.to_owned(), trace);
        }
        self.send_raw(out).await
    }

    /// Publishes a message built by hand and waits for the acknowledgement.
    ///
    /// Once the producer is connected, the message is handed to the broker when this is
    /// called, and the future waits for the acknowledgement (the in-memory broker appends
    /// it at once, as its `publish` does).
    pub fn send_raw(
        &self,
        mut message: OutgoingMessage,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.prepare(&mut message);
        // The broker's (boxed) publish future made now, so that this future does not carry
        // the message: with 10 000 publishes in flight, that made Kafka produce through
        // `Producer` about a fifth slower than through the broker alone (BENCHMARKS.md).
        let publishing = match self.inner.broker.get() {
            Some(broker) => Ok(publish_counted(broker, message)),
            None => Err(Box::new(message)),
        };
        async move {
            let (counter, publishing) = match publishing {
                Ok(counted) => counted,
                Err(message) => publish_counted(self.broker().await?, *message),
            };
            publishing.await?;
            counter.add_one();
            Ok(())
        }
    }

    /// Wraps `data` in the envelope as event `name`, publishes it on `topic` and waits for
    /// the acknowledgement. Returns the event id.
    pub async fn publish_event<T: Serialize + ?Sized>(
        &self,
        name: &str,
        data: &T,
        topic: &str,
    ) -> Result<Uuid, Error> {
        let (id, message) = self.envelope(name, data, topic, None)?;
        self.send_raw(message).await?;
        Ok(id)
    }

    /// Publishes a typed event on its declared topic under its declared name.
    pub async fn publish<E: TypedEvent>(&self, event: &E) -> Result<Uuid, Error> {
        self.publish_event(E::NAME, event, E::TOPIC).await
    }

    /// The enveloped message for `data`; the trace id comes from the current handler or
    /// request when there is one.
    pub fn envelope<T: Serialize + ?Sized>(
        &self,
        name: &str,
        data: &T,
        topic: &str,
        key: Option<String>,
    ) -> Result<(Uuid, OutgoingMessage), Error> {
        let event = Event::new(name, data, self.source()).with_trace_id(trace::current());
        let payload = serde_json::to_vec(&event)?;
        let mut message = OutgoingMessage::new(topic, payload)
            .with_header(header::EVENT_NAME, name)
            .with_header(header::EVENT_ID, event.id.to_string());
        if let Some(trace) = &event.trace_id {
            message
                .headers
                .insert(header::TRACE_ID.to_owned(), trace.clone());
        }
        message.key = key.map(Key::from);
        Ok((event.id, message))
    }

    /// Publishes in the background: the caller never waits and never sees an error. Needs a
    /// Tokio runtime.
    ///
    /// The message joins this producer's queue: `MESSAGING_EVENT_QUEUE` events may be queued,
    /// in flight or waiting to retry, more are dropped. A publish that fails is retried with
    /// back-off for [`RETRY_FOR`] (or until a flush's deadline), then dropped. Drops are
    /// counted in `messaging_events_dropped_total` and logged at most once per 10 s with the
    /// number dropped since.
    pub fn fire(&self, mut message: OutgoingMessage) {
        self.prepare(&mut message);
        let (item, ahead) = Queued::new(message, &self.inner);
        if ahead >= self.inner.config.event_queue.max(1) {
            return item.drop_because("queue full");
        }
        let item = {
            let sender = self.queue.sender.read().unwrap_or_else(|e| e.into_inner());
            match sender.as_ref() {
                Some(tx) => match tx.send(item) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(item)) => item,
                },
                None => item,
            }
        };
        self.start_publisher(item);
    }

    /// What every publish passes through (sent, fired or a request): the topic as this
    /// environment names it (`MESSAGING_TOPIC_<NAME>`), and with the feature `otel` the
    /// current span's W3C trace context, taken here because a fired event is published later
    /// by a task outside the span.
    pub(crate) fn prepare(&self, message: &mut OutgoingMessage) {
        trace::inject_context(&mut message.headers);
        let config = &self.inner.config;
        if !config.topic_overrides.is_empty() {
            let resolved = config.resolve_topic(&message.topic);
            if resolved != message.topic {
                message.topic = resolved.to_owned();
            }
        }
    }

    /// Starts the publishing task on the current runtime (the first time, or after the
    /// runtime that ran it has gone) and queues `item`.
    fn start_publisher(&self, item: Queued) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return item.drop_because("no Tokio runtime to publish it from");
        };
        let mut sender = self.queue.sender.write().unwrap_or_else(|e| e.into_inner());
        let tx = match sender.as_ref() {
            Some(tx) if !tx.is_closed() => tx,
            _ => {
                let (tx, rx) = mpsc::unbounded_channel();
                runtime.spawn(publish_queued(rx, Arc::clone(&self.inner)));
                sender.insert(tx)
            }
        };
        if let Err(mpsc::error::SendError(item)) = tx.send(item) {
            item.drop_because("publisher stopped");
        }
    }

    /// Background publishes not yet settled: queued, in flight or waiting to retry.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// Waits (up to `timeout`) for background publishes, then flushes the broker's buffers.
    ///
    /// Failing publishes stop retrying in time for the deadline and are counted as dropped;
    /// what has not been tried by then stays queued.
    pub async fn flush_within(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        self.inner.begin_flush(deadline);
        let settle = async {
            loop {
                let settled = self.inner.settled.notified();
                if self.pending() == 0 {
                    break;
                }
                settled.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, settle).await;
        self.inner.end_flush(deadline);
        if let Some(broker) = self.inner.broker.get() {
            broker.flush(timeout).await?;
        }
        Ok(())
    }

    /// [`Producer::flush_within`] with a 30 s limit.
    pub async fn flush(&self) -> Result<(), Error> {
        self.flush_within(Duration::from_secs(30)).await
    }
}

impl Inner {
    /// The broker, connecting on first use.
    async fn broker(&self) -> Result<&Arc<dyn Broker>, Error> {
        if let Some(broker) = self.broker.get() {
            return Ok(broker);
        }
        // Boxed: the connecting future is large, and every publish's future would carry
        // its room (BENCHMARKS.md, Kafka produce).
        Box::pin(self.broker.get_or_try_init(|| connect_once(&self.config))).await
    }

    fn begin_flush(&self, deadline: Instant) {
        let mut slot = self
            .flush_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *slot = Some(slot.map_or(deadline, |d| d.min(deadline)));
        drop(slot);
        self.flushing.notify_waiters();
    }

    fn end_flush(&self, deadline: Instant) {
        let mut slot = self
            .flush_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *slot == Some(deadline) {
            *slot = None;
        }
    }

    /// When retrying `item` must have ended: [`RETRY_FOR`] after it was fired, or a
    /// flush's deadline if that comes first.
    fn retry_until(&self, item: &Queued) -> Instant {
        let window = item.fired + RETRY_FOR;
        let flush = *self
            .flush_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        flush.map_or(window, |deadline| deadline.min(window))
    }

    /// Counts a dropped event; warns at most once per [`WARN_EVERY`].
    fn dropped(&self, reason: &'static str, error: Option<&Error>) {
        metrics().record_dropped();
        if let Some(n) = self.drops.hit(reason) {
            match error {
                Some(error) => tracing::warn!(dropped = n, reason, %error, "events dropped"),
                None => tracing::warn!(dropped = n, reason, "events dropped"),
            }
        }
    }

    /// Logs the drops and failures counted since the last line, if a line is due.
    fn report_due(&self) {
        if let Some((n, reason)) = self.drops.due() {
            tracing::warn!(dropped = n, reason, "events dropped");
        }
        if let Some((n, _)) = self.failures.due() {
            tracing::warn!(
                failed = n,
                queued = self.pending.load(Ordering::Relaxed),
                "event publishes failing; retrying"
            );
        }
    }
}

/// A fired event until it is delivered or dropped; dropping it unsettled (its runtime shut
/// down with it queued) counts it as dropped.
struct Queued {
    message: OutgoingMessage,
    fired: Instant,
    inner: Arc<Inner>,
    /// Why it is being dropped; `None` once delivered.
    drop_reason: Option<&'static str>,
}

impl Queued {
    /// The event, counted as pending, and how many were pending before it.
    fn new(message: OutgoingMessage, inner: &Arc<Inner>) -> (Self, usize) {
        let ahead = inner.pending.fetch_add(1, Ordering::SeqCst);
        let item = Self {
            message,
            fired: Instant::now(),
            inner: Arc::clone(inner),
            drop_reason: Some("abandoned at shutdown"),
        };
        (item, ahead)
    }

    fn drop_because(mut self, reason: &'static str) {
        self.drop_reason = Some(reason);
    }

    fn give_up(mut self, error: &Error) {
        self.drop_reason = None;
        self.inner.dropped("publish failed", Some(error));
    }

    fn delivered(mut self) {
        self.drop_reason = None;
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(reason) = self.drop_reason {
            self.inner.dropped(reason, None);
        }
        if self.inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.settled.notify_waiters();
        }
    }
}

/// The publishing task: takes queued events and publishes them all at once (one at a time
/// while the broker has never been reached, so that a down broker sees one connection
/// attempt at a time), until every producer is gone and the queue is empty. How many there
/// can be is bounded by [`Producer::fire`].
async fn publish_queued(mut queue: mpsc::UnboundedReceiver<Queued>, inner: Arc<Inner>) {
    let mut in_flight = FuturesUnordered::new();
    let mut ticks = tokio::time::interval_at(Instant::now() + WARN_EVERY, WARN_EVERY);
    let mut open = true;
    while open || !in_flight.is_empty() {
        let room = if inner.broker.initialized() {
            usize::MAX
        } else {
            1
        };
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            item = queue.recv(), if open && in_flight.len() < room => match item {
                Some(item) => in_flight.push(deliver(item)),
                None => open = false,
            },
            _ = ticks.tick() => inner.report_due(),
        }
    }
    inner.report_due();
}

/// Publishes one event, retrying with back-off while it is younger than [`RETRY_FOR`] and
/// no flush's deadline comes first.
async fn deliver(item: Queued) {
    let inner = Arc::clone(&item.inner);
    // While publishes fail, an event whose time is (nearly) up is not tried: after a long
    // outage, or once a flush's deadline is near, trying each queued event once would hammer
    // the broker as it comes back, or an unreachable one with connections. The margin is
    // the longest back-off, within which the event retried last gave up.
    if inner.failing.load(Ordering::Relaxed)
        && Instant::now() + MAX_BACKOFF > inner.retry_until(&item)
    {
        return item.drop_because("expired while the broker failed");
    }
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = match inner.broker().await {
            Ok(broker) => {
                let (counter, publishing) = publish_counted(broker, item.message.clone());
                match publishing.await {
                    Ok(()) => {
                        counter.add_one();
                        if inner.failing.load(Ordering::Relaxed) {
                            inner.failing.store(false, Ordering::Relaxed);
                        }
                        return item.delivered();
                    }
                    Err(error) => Error::from(error),
                }
            }
            Err(error) => error,
        };
        inner.failing.store(true, Ordering::Relaxed);
        let hopeless = matches!(error, Error::Config { .. } | Error::UnknownBackend { .. });
        if hopeless || Instant::now() + backoff > inner.retry_until(&item) {
            return item.give_up(&error);
        }
        if let Some(n) = inner.failures.hit("publish failed") {
            tracing::warn!(failed = n, topic = %item.message.topic, %error, queued = inner.pending.load(Ordering::Relaxed), "event publishes failing; retrying");
        } else {
            tracing::debug!(topic = %item.message.topic, %error, ?backoff, "event publish failed; retrying");
        }
        let flushing = inner.flushing.notified();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            // A flush began: its deadline may come before this back-off ends.
            _ = flushing => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts occurrences and says when a log line is due: at most one per [`WARN_EVERY`],
/// carrying the count since the previous one.
#[derive(Default)]
struct Throttle {
    count: AtomicU64,
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    last_line: Option<Instant>,
    reason: &'static str,
}

impl Throttle {
    /// Counts one; `Some(count since the last line)` when a line is due now.
    fn hit(&self, reason: &'static str) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        // Busy: another thread is counting or logging; the count is not lost.
        let mut state = self.state.try_lock().ok()?;
        state.reason = reason;
        Self::take(&self.count, &mut state)
    }

    /// `Some((count, last reason))` when occurrences wait to be logged and a line is due.
    fn due(&self) -> Option<(u64, &'static str)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::take(&self.count, &mut state).map(|n| (n, state.reason))
    }

    fn take(count: &AtomicU64, state: &mut ThrottleState) -> Option<u64> {
        let now = Instant::now();
        if state
            .last_line
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            return None;
        }
        let n = count.swap(0, Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        state.last_line = Some(now);
        Some(n)
    }
}

static GLOBAL: RwLock<Option<Producer>> = RwLock::new(None);

/// Hands `message` to `broker`, with the counter that its acknowledgement adds to.
fn publish_counted(
    broker: &Arc<dyn Broker>,
    message: OutgoingMessage,
) -> (
    &'static PublishedCounter,
    BoxFuture<'_, Result<(), BrokerError>>,
) {
    let counter =
        metrics().published_counter(broker.name(), message.headers.get(header::EVENT_NAME));
    (counter, broker.publish(message))
}

/// The process-wide producer: the one installed by the runtime or with [`install_producer`],
/// else one on the configured backend, connecting on first use.
pub fn get_producer() -> Producer {
    if let Some(p) = GLOBAL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut slot = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| Producer::lazy(current_config()))
        .clone()
}

/// Makes `producer` the process-wide one (the runtime does this with its own broker).
pub fn install_producer(producer: Producer) {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = Some(producer);
}

pub(crate) fn reset_global_producer() {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Publishes an enveloped event with the process-wide producer; waits for the acknowledgement.
pub async fn publish_event<T: Serialize + ?Sized>(
    name: &str,
    data: &T,
    topic: &str,
) -> Result<Uuid, Error> {
    get_producer().publish_event(name, data, topic).await
}

/// Publishes a typed event with the process-wide producer.
pub async fn publish<E: TypedEvent>(event: &E) -> Result<Uuid, Error> {
    get_producer().publish(event).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Consumer, Subscription};

    /// Acknowledges what is published to `ok`, refuses the rest.
    struct Picky;

    impl Broker for Picky {
        fn name(&self) -> &'static str {
            "picky"
        }

        fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
            Box::pin(async move {
                if message.topic == "ok" {
                    Ok(())
                } else {
                    Err(BrokerError::operation("picky", "publish", "refused"))
                }
            })
        }

        fn subscribe(
            &self,
            _: Subscription,
        ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
            Box::pin(async {
                Err(BrokerError::Unsupported {
                    broker: "picky",
                    operation: "subscribe",
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_come_at_most_every_10s_with_the_count_since_the_last() {
        let throttle = Throttle::default();
        assert_eq!(
            throttle.hit("queue full"),
            Some(1),
            "the first one is logged"
        );
        for _ in 0..999 {
            assert_eq!(throttle.hit("queue full"), None);
        }
        assert_eq!(throttle.due(), None, "not 10 s yet");
        tokio::time::advance(WARN_EVERY - Duration::from_millis(1)).await;
        assert_eq!(throttle.hit("publish failed"), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(throttle.due(), Some((1000, "publish failed")));
        tokio::time::advance(WARN_EVERY).await;
        assert_eq!(throttle.due(), None, "nothing since");
        assert_eq!(throttle.hit("queue full"), Some(1));
    }

    #[tokio::test]
    async fn a_publish_is_counted_under_its_event_name_once_acknowledged() {
        let producer = Producer::new(Arc::new(Picky), Config::default());
        let named = |topic: &str| {
            OutgoingMessage::new(topic, "{}").with_header(header::EVENT_NAME, "count.me")
        };
        producer.send_raw(named("ok")).await.unwrap();
        producer.send_raw(named("ok")).await.unwrap();
        producer.send_raw(named("no")).await.unwrap_err();
        producer
            .send_raw(OutgoingMessage::new("ok", "{}"))
            .await
            .unwrap();
        assert_eq!(
            metrics().published("picky", "count.me"),
            2,
            "refused: not counted"
        );
        assert_eq!(metrics().published("picky", ""), 1, "no event name");
        let text = metrics().render();
        assert!(
            text.contains("messaging_published_total{backend=\"picky\",event=\"count.me\"} 2"),
            "{text}"
        );
    }
}
