//! Counters, gauges and histograms: what was published, handled, retried, dead-lettered and
//! dropped, how long handlers took, how old a message was when its handler finished, and how
//! far consumers are behind.
//!
//! Every sample goes through the [`metrics`](mod@::metrics) facade, so whichever recorder the
//! process installed exports it: the `consumer` binary installs `metrics-exporter-prometheus` for
//! `GET /metrics` (`install_prometheus`, feature `prometheus`); a service with a recorder
//! of its own (Prometheus, OpenTelemetry, StatsD …) gets ours in its own exporter. The facade's
//! handles are taken once — per handler and lane when the runtime starts, per backend and
//! event name at the first publish, per topic at the first skip or duplicate — never per
//! message. So **install a recorder before starting the runtime** (and before publishing): a
//! handle taken before any recorder was installed stays a no-op. The lag gauges (`lag.rs`,
//! set on an interval) and the rare process-wide counters are looked up each time instead.
//!
//! The counts are mirrored here as well, for the accessors ([`Metrics::duplicates`],
//! [`Metrics::handler_totals`] …) and for [`Metrics::render`], which needs no recorder.
//! Per-handler counts are atomics created at start-up, one shard per lane, so the hot path
//! takes no lock and, for the mirror, no locked instruction.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ::metrics::{Counter, Histogram};

use crate::message::{Message, header};

/// The metric names, as exported.
pub mod names {
    /// Counter `{backend, event}`: messages the broker acknowledged to this process's producers.
    pub const PUBLISHED: &str = "messaging_published_total";
    /// Counter: `#[event]` publishes that failed, and what the `disabled` backend drops.
    pub const EVENTS_DROPPED: &str = "messaging_events_dropped_total";
    /// Counter `{topic, reason}`: messages acknowledged that no handler took.
    pub const SKIPPED: &str = "messaging_skipped_total";
    /// Counter `{topic, group}`: duplicates an idempotent handler acknowledged without running.
    pub const DUPLICATES: &str = "messaging_duplicates_total";
    /// Counter `{topic, handler}`: requests acknowledged unhandled, past their deadline.
    pub const REQUESTS_EXPIRED: &str = "messaging_requests_expired_total";
    /// Counter: replies that arrived after their requester stopped waiting.
    pub const LATE_REPLIES: &str = "messaging_late_replies_total";
    /// Counter `{topic, handler, outcome}` (`ok`, `dead_lettered`): messages handled.
    pub const HANDLED: &str = "messaging_handled_total";
    /// Counter `{topic, handler}`: retries scheduled.
    pub const RETRIED: &str = "messaging_retried_total";
    /// Counter `{topic, handler}`: messages dead-lettered.
    pub const DEAD_LETTERED: &str = "messaging_dead_lettered_total";
    /// Counter `{topic, handler}`: handler calls, retries included.
    pub const HANDLER_ATTEMPTS: &str = "messaging_handler_attempts_total";
    /// Histogram `{topic, handler}`: seconds per handler call ([`super::LATENCY_BUCKETS`]).
    pub const HANDLER_DURATION: &str = "messaging_handler_duration_seconds";
    /// Histogram `{topic, handler}`: seconds from an event's creation to the end of its
    /// successful handling ([`super::END_TO_END_BUCKETS`]).
    pub const END_TO_END: &str = "messaging_end_to_end_seconds";
    /// Gauge `{backend}`: 1 for the backend in use.
    pub const BACKEND: &str = "messaging_backend";
    /// Gauge `{group, topic, partition}`: messages not yet handled by the group.
    pub const CONSUMER_LAG: &str = "messaging_consumer_lag";
    /// Gauge `{group, topic, partition}`: messages delivered to the group and not yet
    /// acknowledged.
    pub const CONSUMER_PENDING: &str = "messaging_consumer_pending";
}

/// Upper bounds (seconds) of the handler latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Upper bounds (seconds) of the end-to-end latency histogram. The event's creation time
/// is known to the millisecond, so nothing finer.
pub const END_TO_END_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Bounds in nanoseconds (rounded): the hot path compares integers, not floats.
const fn nanos<const N: usize>(seconds: [f64; N]) -> [u64; N] {
    let mut nanos = [0; N];
    let mut i = 0;
    while i < N {
        nanos[i] = (seconds[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    nanos
}

const LATENCY_BOUNDS_NANOS: [u64; LATENCY_BUCKETS.len()] = nanos(LATENCY_BUCKETS);
const END_TO_END_BOUNDS_NANOS: [u64; END_TO_END_BUCKETS.len()] = nanos(END_TO_END_BUCKETS);

/// A histogram's mirror: one count per bound plus one for larger values (not cumulative),
/// and the sum in nanoseconds.
#[derive(Debug)]
struct Buckets<const N: usize> {
    counts: [AtomicU64; N],
    sum_nanos: AtomicU64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// The facade's handles of one handler on one topic; each lane holds a clone.
#[derive(Clone, Debug)]
struct Exported {
    attempts: Counter,
    ok: Counter,
    /// `messaging_handled_total{outcome="dead_lettered"}` and `messaging_dead_lettered_total`.
    dead: [Counter; 2],
    retried: Counter,
    duration: Histogram,
    end_to_end: Histogram,
}

impl Exported {
    fn new(topic: &str, handler: &str) -> Self {
        let labels = || {
            [
                ::metrics::Label::new("topic", topic.to_owned()),
                ::metrics::Label::new("handler", handler.to_owned()),
            ]
        };
        let with_outcome = |outcome: &'static str| {
            let mut labels = labels().to_vec();
            labels.push(::metrics::Label::new("outcome", outcome));
            labels
        };
        Self {
            attempts: ::metrics::counter!(names::HANDLER_ATTEMPTS, labels().iter()),
            ok: ::metrics::counter!(names::HANDLED, with_outcome("ok").iter()),
            dead: [
                ::metrics::counter!(names::HANDLED, with_outcome("dead_lettered").iter()),
                ::metrics::counter!(names::DEAD_LETTERED, labels().iter()),
            ],
            retried: ::metrics::counter!(names::RETRIED, labels().iter()),
            duration: ::metrics::histogram!(names::HANDLER_DURATION, labels().iter()),
            end_to_end: ::metrics::histogram!(names::END_TO_END, labels().iter()),
        }
    }
}

/// Counters of one handler on one topic, read by summing the lanes' shards.
///
/// Each lane of the dispatcher writes its own shard and no other, so a mirrored count goes up
/// with a plain load and store instead of a locked read-modify-write: four of those per
/// message cost more than the rest of the framework's bookkeeping of it (BENCHMARKS.md).
#[derive(Debug)]
pub struct HandlerMetrics {
    shards: Box<[LaneCounters]>,
}

/// One lane's counters. Aligned to its own cache lines so that lanes on different cores do
/// not contend for them.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct LaneCounters {
    /// Handler calls (every attempt).
    attempts: AtomicU64,
    /// Messages handled successfully.
    succeeded: AtomicU64,
    /// Retries scheduled.
    retried: AtomicU64,
    /// Messages dead-lettered.
    dead_lettered: AtomicU64,
    /// In nanoseconds: most calls take less than a microsecond.
    latency: Buckets<{ LATENCY_BUCKETS.len() + 1 }>,
    end_to_end: Buckets<{ END_TO_END_BUCKETS.len() + 1 }>,
    /// The wall clock (nanoseconds since the Unix epoch) when the handler clock read
    /// `wall_at`; 0 before the first reading. See [`LaneCounters::wall_clock`].
    wall: AtomicU64,
    wall_at: AtomicU64,
    /// Written by many tasks at once (the retries'), so every addition is atomic.
    shared: bool,
    exported: Exported,
}

/// How long a lane goes on from its last reading of the wall clock with the handler clock:
/// far too short for the two to drift apart, long enough to spare thousands of readings.
const WALL_CLOCK_EVERY_NANOS: u64 = 1_000_000;

fn wall_clock_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl LaneCounters {
    /// Adds to a mirrored counter. A lane's own counters have one writer: a plain load and
    /// store, which readers may see a moment late, never torn or lost. The shared lane adds
    /// atomically.
    fn bump(&self, counter: &AtomicU64, n: u64) {
        if self.shared {
            counter.fetch_add(n, Relaxed);
        } else {
            counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    fn observe<const N: usize>(&self, buckets: &Buckets<N>, bounds: &[u64], nanos: u64) {
        let bucket = bounds
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(bounds.len());
        self.bump(&buckets.counts[bucket], 1);
        self.bump(&buckets.sum_nanos, nanos);
    }

    pub(crate) fn attempted(&self) {
        self.bump(&self.attempts, 1);
        self.exported.attempts.increment(1);
    }

    pub(crate) fn succeeded(&self) {
        self.bump(&self.succeeded, 1);
        self.exported.ok.increment(1);
    }

    pub(crate) fn retried(&self) {
        self.bump(&self.retried, 1);
        self.exported.retried.increment(1);
    }

    pub(crate) fn dead_lettered(&self) {
        self.bump(&self.dead_lettered, 1);
        for counter in &self.exported.dead {
            counter.increment(1);
        }
    }

    pub(crate) fn observe_latency(&self, nanos: u64) {
        self.observe(&self.latency, &LATENCY_BOUNDS_NANOS, nanos);
        self.exported.duration.record(nanos as f64 / 1e9);
    }

    /// Observes how old `message` is, now that its handler succeeded: from the creation time
    /// of its envelope to `ended` (on `clock`, the dispatcher's), on this machine's wall
    /// clock. Messages without an envelope id (sent with `send`, not `publish_event`), whose
    /// id is not a UUIDv7, or that were replayed from a DLQ (their age would be the time
    /// they waited there) are not observed.
    pub(crate) fn observe_end_to_end(&self, message: &Message, clock: &quanta::Clock, ended: u64) {
        if let Some(created_ms) = created_millis(message) {
            let now = self.wall_clock(clock, ended);
            let nanos = now.saturating_sub(created_ms.saturating_mul(1_000_000));
            self.observe(&self.end_to_end, &END_TO_END_BOUNDS_NANOS, nanos);
            self.exported.end_to_end.record(nanos as f64 / 1e9);
        }
    }

    /// The wall clock at `raw` on `clock`. Reading the wall clock costs about a tenth of the
    /// framework's work on a message, so a lane reads it at most once per millisecond and
    /// adds the handler clock's time since. The shared lane, written by many tasks, reads it
    /// each time.
    fn wall_clock(&self, clock: &quanta::Clock, raw: u64) -> u64 {
        if self.shared {
            return wall_clock_now();
        }
        let (wall, at) = (self.wall.load(Relaxed), self.wall_at.load(Relaxed));
        let since = clock.delta_as_nanos(at, raw);
        if wall != 0 && raw >= at && since < WALL_CLOCK_EVERY_NANOS {
            return wall + since;
        }
        let now = wall_clock_now();
        self.wall.store(now, Relaxed);
        self.wall_at.store(raw, Relaxed);
        now
    }
}

/// When the envelope of `message` was created, in milliseconds since the Unix epoch.
///
/// Read from the event id header: the envelope's id is a UUIDv7, made with the envelope's
/// `timestamp`, whose first 48 bits are that time in milliseconds. So the body is not parsed
/// a second time.
fn created_millis(message: &Message) -> Option<u64> {
    let mut id = None;
    for (name, value) in &message.headers {
        match name {
            header::EVENT_ID => id = Some(value),
            header::REPLAYED => return None,
            _ => {}
        }
    }
    uuid_v7_millis(id?)
}

/// The milliseconds of a UUIDv7 in its text form (`0190c0e2-7d1a-7…`), or `None` if it is
/// not one.
fn uuid_v7_millis(id: &[u8]) -> Option<u64> {
    if id.len() != 36 || id[8] != b'-' || id[13] != b'-' || id[14] != b'7' {
        return None;
    }
    // One table lookup per digit, with the invalid ones gathered and checked once: on every
    // handled message, so kept to a few instructions a digit.
    let (mut ms, mut invalid) = (0u64, 0u8);
    for part in [&id[..8], &id[9..13]] {
        for &digit in part {
            let value = HEX_DIGITS[usize::from(digit)];
            invalid |= value;
            ms = ms << 4 | u64::from(value & 0x0f);
        }
    }
    (invalid & 0x80 == 0).then_some(ms)
}

/// Each byte's value as a hex digit, or 0x80 when it is not one.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [0x80; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

impl HandlerMetrics {
    /// Counters for `handler` on `topic` run by `lanes` lanes, plus the shared lane of its
    /// retries.
    pub(crate) fn new(topic: &str, handler: &str, lanes: usize) -> Self {
        let lanes = lanes.max(1);
        let exported = Exported::new(topic, handler);
        Self {
            shards: (0..=lanes)
                .map(|lane| LaneCounters {
                    attempts: AtomicU64::new(0),
                    succeeded: AtomicU64::new(0),
                    retried: AtomicU64::new(0),
                    dead_lettered: AtomicU64::new(0),
                    latency: Buckets::default(),
                    end_to_end: Buckets::default(),
                    wall: AtomicU64::new(0),
                    wall_at: AtomicU64::new(0),
                    shared: lane == lanes,
                    exported: exported.clone(),
                })
                .collect(),
        }
    }

    /// The counters lane `lane` writes; only that lane may use them.
    pub(crate) fn lane(&self, lane: usize) -> &LaneCounters {
        &self.shards[lane % (self.shards.len() - 1)]
    }

    /// The counters every retry task writes, atomically.
    pub(crate) fn shared_lane(&self) -> &LaneCounters {
        &self.shards[self.shards.len() - 1]
    }

    fn sum(&self, pick: impl Fn(&LaneCounters) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| pick(s).load(Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Handler calls (every attempt).
    pub fn attempts(&self) -> u64 {
        self.sum(|s| &s.attempts)
    }

    /// Messages handled successfully.
    pub fn succeeded(&self) -> u64 {
        self.sum(|s| &s.succeeded)
    }

    /// Retries scheduled.
    pub fn retried(&self) -> u64 {
        self.sum(|s| &s.retried)
    }

    /// Messages dead-lettered.
    pub fn dead_lettered(&self) -> u64 {
        self.sum(|s| &s.dead_lettered)
    }

    /// Successfully handled messages whose end-to-end latency was observed.
    pub fn end_to_end_count(&self) -> u64 {
        (0..=END_TO_END_BUCKETS.len())
            .map(|i| self.sum(|s| &s.end_to_end.counts[i]))
            .sum()
    }

    /// Calls per latency bucket (the last one: slower than every bound), not cumulative.
    fn latency_buckets(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.sum(|s| &s.latency.counts[i]))
    }

    fn latency_sum_nanos(&self) -> u64 {
        self.sum(|s| &s.latency.sum_nanos)
    }

    fn end_to_end_buckets(&self) -> [u64; END_TO_END_BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.sum(|s| &s.end_to_end.counts[i]))
    }

    fn end_to_end_sum_nanos(&self) -> u64 {
        self.sum(|s| &s.end_to_end.sum_nanos)
    }
}

/// Counters summed over every handler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandlerTotals {
    /// Handler calls.
    pub attempts: u64,
    /// Messages handled successfully.
    pub succeeded: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
}

/// The counter a publish adds to once the broker acknowledged it.
#[derive(Debug)]
pub(crate) struct PublishedCounter {
    count: AtomicU64,
    exported: Counter,
}

impl PublishedCounter {
    /// One more message published.
    pub(crate) fn add_one(&self) {
        self.count.fetch_add(1, Relaxed);
        self.exported.increment(1);
    }
}

/// A mirrored count and its facade handle, kept per label set.
#[derive(Debug)]
struct Counted {
    value: u64,
    handle: Counter,
}

type ByLabels<const N: usize> = Mutex<BTreeMap<[String; N], Counted>>;

/// Process-wide metrics: see the module's documentation.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By backend, then event name; nested so that a publish looks its counter up with
    /// `&str`, under a read lock, and allocates only for a new pair. The counters are leaked,
    /// so that a publish holds one without a reference count: there is one per event name,
    /// and they are counted for the life of the process anyway.
    published: RwLock<BTreeMap<String, BTreeMap<String, &'static PublishedCounter>>>,
    dropped: AtomicU64,
    /// By topic and reason.
    skipped: ByLabels<2>,
    /// Duplicates an idempotent handler did not run, by topic and group.
    duplicates: ByLabels<2>,
    /// Requests acknowledged unhandled because their deadline had passed, by topic and
    /// handler.
    expired_requests: ByLabels<2>,
    /// Replies that arrived after their requester stopped waiting.
    late_replies: AtomicU64,
    handlers: Mutex<Vec<(String, String, Arc<HandlerMetrics>)>>,
    backend: Mutex<Option<String>>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// Adds one to the count of `labels`, taking its counter from the facade the first time.
fn add_one<const N: usize>(
    map: &ByLabels<N>,
    name: &'static str,
    keys: [&'static str; N],
    labels: [&str; N],
) {
    let mut map = lock(map);
    let counted = map
        .entry(labels.map(str::to_owned))
        .or_insert_with_key(|values| Counted {
            value: 0,
            handle: ::metrics::counter!(name, label_list(keys, values).iter()),
        });
    counted.value += 1;
    counted.handle.increment(1);
}

fn label_list<const N: usize>(
    keys: [&'static str; N],
    values: &[String; N],
) -> Vec<::metrics::Label> {
    keys.iter()
        .zip(values)
        .map(|(key, value)| ::metrics::Label::new(*key, value.clone()))
        .collect()
}

fn value_of<const N: usize>(map: &ByLabels<N>, labels: [&str; N]) -> Option<u64> {
    lock(map).get(&labels.map(str::to_owned)).map(|c| c.value)
}

impl Metrics {
    /// The counter of messages published on `backend` as `event`, looked up before the
    /// publish so that the message need not be kept (nor its event name copied) until it is
    /// acknowledged; add to it then.
    pub(crate) fn published_counter(
        &self,
        backend: &str,
        event: Option<&str>,
    ) -> &'static PublishedCounter {
        let event = event.unwrap_or("");
        let found = read(&self.published)
            .get(backend)
            .and_then(|events| events.get(event))
            .copied();
        found.unwrap_or_else(|| {
            *write(&self.published)
                .entry(backend.to_owned())
                .or_default()
                .entry(event.to_owned())
                .or_insert_with(|| {
                    Box::leak(Box::new(PublishedCounter {
                        count: AtomicU64::new(0),
                        exported: ::metrics::counter!(
                            names::PUBLISHED,
                            "backend" => backend.to_owned(),
                            "event" => event.to_owned()
                        ),
                    }))
                })
        })
    }

    pub(crate) fn record_dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
        // Looked up each time: a drop may come before any recorder is installed.
        ::metrics::counter!(names::EVENTS_DROPPED).increment(1);
    }

    /// Counts an acknowledged message that no handler took, with the reason.
    pub(crate) fn record_skipped(&self, topic: &str, reason: &str) {
        add_one(
            &self.skipped,
            names::SKIPPED,
            ["topic", "reason"],
            [topic, reason],
        );
    }

    pub(crate) fn set_backend(&self, backend: &str) {
        let previous = lock(&self.backend).replace(backend.to_owned());
        if let Some(previous) = previous.filter(|p| p != backend) {
            ::metrics::gauge!(names::BACKEND, "backend" => previous).set(0.0);
        }
        ::metrics::gauge!(names::BACKEND, "backend" => backend.to_owned()).set(1.0);
    }

    pub(crate) fn register_handler(
        &self,
        topic: &str,
        handler: &str,
        lanes: usize,
    ) -> Arc<HandlerMetrics> {
        let m = Arc::new(HandlerMetrics::new(topic, handler, lanes));
        lock(&self.handlers).push((topic.to_owned(), handler.to_owned(), Arc::clone(&m)));
        m
    }

    /// Counters summed over every handler.
    pub fn handler_totals(&self) -> HandlerTotals {
        let mut totals = HandlerTotals::default();
        for (_, _, m) in lock(&self.handlers).iter() {
            totals.attempts += m.attempts();
            totals.succeeded += m.succeeded();
            totals.retried += m.retried();
            totals.dead_lettered += m.dead_lettered();
        }
        totals
    }

    /// Events dropped by the background publisher (`messaging_events_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Messages published through this process's producers, by backend and event name.
    pub fn published(&self, backend: &str, event: &str) -> u64 {
        read(&self.published)
            .get(backend)
            .and_then(|events| events.get(event))
            .map_or(0, |n| n.count.load(Relaxed))
    }

    /// Duplicates of `topic` that the idempotent handlers of `group` acknowledged without
    /// running (`messaging_duplicates_total`).
    pub fn duplicates(&self, topic: &str, group: &str) -> u64 {
        value_of(&self.duplicates, [topic, group]).unwrap_or(0)
    }

    pub(crate) fn record_duplicate(&self, topic: &str, group: &str) {
        add_one(
            &self.duplicates,
            names::DUPLICATES,
            ["topic", "group"],
            [topic, group],
        );
    }

    pub(crate) fn record_expired_request(&self, topic: &str, handler: &str) {
        add_one(
            &self.expired_requests,
            names::REQUESTS_EXPIRED,
            ["topic", "handler"],
            [topic, handler],
        );
    }

    /// Requests to `topic` that `handler` acknowledged without running because their
    /// deadline had passed (`messaging_requests_expired_total`).
    pub fn expired_requests(&self, topic: &str, handler: &str) -> u64 {
        value_of(&self.expired_requests, [topic, handler]).unwrap_or(0)
    }

    pub(crate) fn record_late_reply(&self) {
        self.late_replies.fetch_add(1, Relaxed);
        ::metrics::counter!(names::LATE_REPLIES).increment(1);
    }

    /// Replies that arrived after their requester had stopped waiting, and were dropped
    /// (`messaging_late_replies_total`).
    pub fn late_replies(&self) -> u64 {
        self.late_replies.load(Relaxed)
    }

    /// Acknowledged messages that no handler took, by topic and reason.
    pub fn skipped(&self, topic: &str, reason: &str) -> u64 {
        value_of(&self.skipped, [topic, reason]).unwrap_or(0)
    }

    /// Prometheus text exposition of every metric, from this module's own counts: what
    /// `GET /metrics` serves when no exporter of ours is installed.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE {} counter", names::PUBLISHED);
        for (backend, event, n) in read(&self.published)
            .iter()
            .flat_map(|(b, events)| events.iter().map(move |(e, n)| (b, e, n)))
        {
            let _ = writeln!(
                out,
                "{}{{backend=\"{}\",event=\"{}\"}} {}",
                names::PUBLISHED,
                esc(backend),
                esc(event),
                n.count.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE {} counter", names::EVENTS_DROPPED);
        let _ = writeln!(out, "{} {}", names::EVENTS_DROPPED, self.dropped());
        for (name, map, keys) in [
            (names::SKIPPED, &self.skipped, ["topic", "reason"]),
            (names::DUPLICATES, &self.duplicates, ["topic", "group"]),
            (
                names::REQUESTS_EXPIRED,
                &self.expired_requests,
                ["topic", "handler"],
            ),
        ] {
            render_family(&mut out, name, "counter", &keys, &lock(map));
        }
        let _ = writeln!(out, "# TYPE {} counter", names::LATE_REPLIES);
        let _ = writeln!(out, "{} {}", names::LATE_REPLIES, self.late_replies());
        let handlers = lock(&self.handlers);
        let _ = writeln!(out, "# TYPE {} counter", names::HANDLED);
        for (topic, handler, m) in handlers.iter() {
            let labels = format!("topic=\"{}\",handler=\"{}\"", esc(topic), esc(handler));
            let ok = m.succeeded();
            let dead = m.dead_lettered();
            let _ = writeln!(out, "{}{{{labels},outcome=\"ok\"}} {ok}", names::HANDLED);
            let _ = writeln!(
                out,
                "{}{{{labels},outcome=\"dead_lettered\"}} {dead}",
                names::HANDLED
            );
        }
        for (name, pick) in [
            (
                names::RETRIED,
                HandlerMetrics::retried as fn(&HandlerMetrics) -> u64,
            ),
            (names::DEAD_LETTERED, HandlerMetrics::dead_lettered),
            (names::HANDLER_ATTEMPTS, HandlerMetrics::attempts),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (topic, handler, m) in handlers.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",handler=\"{}\"}} {}",
                    esc(topic),
                    esc(handler),
                    pick(m)
                );
            }
        }
        let _ = writeln!(out, "# TYPE {} histogram", names::HANDLER_DURATION);
        for (topic, handler, m) in handlers.iter() {
            render_histogram(
                &mut out,
                names::HANDLER_DURATION,
                &format!("topic=\"{}\",handler=\"{}\"", esc(topic), esc(handler)),
                &LATENCY_BUCKETS,
                &m.latency_buckets(),
                m.latency_sum_nanos(),
            );
        }
        let _ = writeln!(out, "# TYPE {} histogram", names::END_TO_END);
        for (topic, handler, m) in handlers.iter() {
            render_histogram(
                &mut out,
                names::END_TO_END,
                &format!("topic=\"{}\",handler=\"{}\"", esc(topic), esc(handler)),
                &END_TO_END_BUCKETS,
                &m.end_to_end_buckets(),
                m.end_to_end_sum_nanos(),
            );
        }
        drop(handlers);
        crate::lag::render(&mut out);
        if let Some(backend) = lock(&self.backend).as_ref() {
            let _ = writeln!(out, "# TYPE {} gauge", names::BACKEND);
            let _ = writeln!(out, "{}{{backend=\"{}\"}} 1", names::BACKEND, esc(backend));
        }
        out
    }
}

/// A `metrics-exporter-prometheus` builder with our histograms' buckets, for a service that
/// installs the exporter itself (without buckets it would render them as summaries).
#[cfg(feature = "prometheus")]
pub fn prometheus_builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::HANDLER_DURATION.into()),
            &LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(names::END_TO_END.into()), &END_TO_END_BUCKETS)
        })
        .expect("the bucket lists are not empty")
}

/// Installs `metrics-exporter-prometheus` ([`prometheus_builder`]) as the process's recorder,
/// and a thread that drains its histograms every 5 s (else their samples pile up between
/// scrapes). Call it before the runtime starts. Fails when the process already has a
/// recorder: then our metrics go to that one, and [`prometheus_handle`] stays `None`.
#[cfg(feature = "prometheus")]
pub fn install_prometheus() -> Result<
    &'static metrics_exporter_prometheus::PrometheusHandle,
    metrics_exporter_prometheus::BuildError,
> {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _once = lock(&INSTALLING);
    if let Some(handle) = prometheus_handle() {
        return Ok(handle);
    }
    let handle = prometheus_builder().install_recorder()?;
    let handle = PROMETHEUS.get_or_init(|| handle);
    // Counted before the recorder existed, and shown from the start as before.
    ::metrics::counter!(names::EVENTS_DROPPED).absolute(metrics().dropped());
    ::metrics::counter!(names::LATE_REPLIES).absolute(metrics().late_replies());
    let _ = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                if let Some(handle) = prometheus_handle() {
                    handle.run_upkeep();
                }
            }
        });
    Ok(handle)
}

#[cfg(feature = "prometheus")]
static PROMETHEUS: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

/// The handle of the exporter [`install_prometheus`] installed, if it did.
#[cfg(feature = "prometheus")]
pub fn prometheus_handle() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    PROMETHEUS.get()
}

fn render_family<const N: usize>(
    out: &mut String,
    name: &str,
    kind: &str,
    keys: &[&str; N],
    samples: &BTreeMap<[String; N], Counted>,
) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (values, counted) in samples {
        let labels: Vec<String> = keys
            .iter()
            .zip(values)
            .map(|(key, value)| format!("{key}=\"{}\"", esc(value)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {}", labels.join(","), counted.value);
    }
}

fn render_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    sum_nanos: u64,
) {
    let mut cumulative = 0;
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let total: u64 = counts.iter().sum();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let sum = sum_nanos as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nanosecond_bounds_are_the_published_ones() {
        for (nanos, secs) in LATENCY_BOUNDS_NANOS.iter().zip(LATENCY_BUCKETS) {
            assert_eq!(*nanos as f64 / 1e9, secs);
        }
        for (nanos, secs) in END_TO_END_BOUNDS_NANOS.iter().zip(END_TO_END_BUCKETS) {
            assert_eq!(*nanos as f64 / 1e9, secs);
        }
    }

    #[test]
    fn latencies_fall_in_their_buckets_and_sum_in_nanoseconds() {
        let handler = HandlerMetrics::new("t", "h", 2);
        // On a bound counts in that bucket; above the last bound in the overflow one.
        for nanos in [400, 1_000_000, 1_000_001, 10_000_000_001] {
            handler.lane(1).observe_latency(nanos);
        }
        handler.lane(0).observe_latency(700);
        let buckets = handler.latency_buckets();
        assert_eq!(buckets[0], 3);
        assert_eq!(buckets[1], 1);
        assert_eq!(buckets[LATENCY_BUCKETS.len()], 1);
        assert_eq!(buckets.iter().sum::<u64>(), 5);
        // Sub-microsecond calls still count in the sum (in microseconds they were 0).
        assert_eq!(
            handler.latency_sum_nanos(),
            400 + 1_000_000 + 1_000_001 + 10_000_000_001 + 700
        );
    }

    fn enveloped(id: &str) -> Message {
        let mut message = Message::new("t", b"{}".to_vec());
        message.headers.insert(header::EVENT_ID, id);
        message
    }

    #[test]
    fn the_creation_time_is_read_from_the_uuid_v7_envelope_id() {
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_754_000_000,
            123_000_000,
        ))
        .to_string();
        assert_eq!(created_millis(&enveloped(&id)), Some(1_754_000_000_123));
        // Not a v7 id, not an id, no id, a replay: not observed.
        let v4 = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(created_millis(&enveloped(v4)), None);
        assert_eq!(created_millis(&enveloped("order-42")), None);
        assert_eq!(created_millis(&Message::new("t", Vec::new())), None);
        let mut replayed = enveloped(&id);
        replayed.headers.insert(header::REPLAYED, "1");
        assert_eq!(created_millis(&replayed), None);
    }

    #[test]
    fn a_lane_adds_the_handler_clock_to_its_last_wall_clock_reading() {
        let (clock, mock) = quanta::Clock::mock();
        let handler = HandlerMetrics::new("t", "h", 1);
        let lane = handler.lane(0);
        let first = lane.wall_clock(&clock, clock.raw());
        let system = wall_clock_now();
        assert!(first <= system && system - first < 1_000_000_000);
        mock.increment(std::time::Duration::from_micros(300));
        assert_eq!(lane.wall_clock(&clock, clock.raw()), first + 300_000);
        // Past a millisecond the wall clock is read again.
        mock.increment(std::time::Duration::from_secs(3600));
        let again = lane.wall_clock(&clock, clock.raw());
        assert!(
            again < first + 3_600_000_000_000 && again >= first,
            "{again}"
        );
    }

    #[test]
    fn a_publisher_clock_ahead_of_ours_counts_as_no_time() {
        let (clock, _) = quanta::Clock::mock();
        let handler = HandlerMetrics::new("t", "h", 1);
        let future = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            wall_clock_now() / 1_000_000_000 + 60,
            0,
        ))
        .to_string();
        handler
            .lane(0)
            .observe_end_to_end(&enveloped(&future), &clock, clock.raw());
        assert_eq!(handler.end_to_end_buckets()[0], 1);
        assert_eq!(handler.end_to_end_sum_nanos(), 0);
    }
}
