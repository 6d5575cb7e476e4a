//! Counters: what was published, handled, retried, dead-lettered and dropped. Per-handler
//! counters are atomics created at start-up, one shard per lane, so the hot path takes no lock
//! and no locked instruction.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Upper bounds (seconds) of the handler latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// [`LATENCY_BUCKETS`] in nanoseconds (rounded): the hot path compares integers, not floats.
const LATENCY_BOUNDS_NANOS: [u64; LATENCY_BUCKETS.len()] = {
    let mut nanos = [0; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < nanos.len() {
        nanos[i] = (LATENCY_BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    nanos
};

/// Counters of one handler on one topic, read by summing the lanes' shards.
///
/// Each lane of the dispatcher writes its own shard and no other, so a count goes up with a
/// plain load and store instead of a locked read-modify-write: four of those per message
/// cost more than the rest of the framework's bookkeeping of it (BENCHMARKS.md).
#[derive(Debug)]
pub struct HandlerMetrics {
    shards: Box<[LaneCounters]>,
}

/// One lane's counters. Aligned to its own cache lines so that lanes on different cores do
/// not contend for them.
#[derive(Debug, Default)]
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
    /// One counter per bucket plus one for slower calls; the count is their sum.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// In nanoseconds: most calls take less than a microsecond.
    latency_sum_nanos: AtomicU64,
    /// Written by many tasks at once (the retries'), so every addition is atomic.
    shared: bool,
}

impl LaneCounters {
    /// Adds to a counter. A lane's own counters have one writer: a plain load and store,
    /// which readers may see a moment late, never torn or lost. The shared lane adds
    /// atomically.
    fn bump(&self, counter: &AtomicU64, n: u64) {
        if self.shared {
            counter.fetch_add(n, Relaxed);
        } else {
            counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    pub(crate) fn attempted(&self) {
        self.bump(&self.attempts, 1);
    }

    pub(crate) fn succeeded(&self) {
        self.bump(&self.succeeded, 1);
    }

    pub(crate) fn retried(&self) {
        self.bump(&self.retried, 1);
    }

    pub(crate) fn dead_lettered(&self) {
        self.bump(&self.dead_lettered, 1);
    }

    pub(crate) fn observe_latency(&self, nanos: u64) {
        let bucket = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BOUNDS_NANOS.len());
        self.bump(&self.latency_buckets[bucket], 1);
        self.bump(&self.latency_sum_nanos, nanos);
    }
}

impl HandlerMetrics {
    /// Counters for a handler run by `lanes` lanes, plus the shared lane of its retries.
    pub(crate) fn new(lanes: usize) -> Self {
        let lanes = lanes.max(1);
        Self {
            shards: (0..=lanes)
                .map(|lane| LaneCounters {
                    shared: lane == lanes,
                    ..LaneCounters::default()
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

    /// Calls per latency bucket (the last one: slower than every bound), not cumulative.
    fn latency_buckets(&self) -> [u64; LATENCY_BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.sum(|s| &s.latency_buckets[i]))
    }

    fn latency_sum_nanos(&self) -> u64 {
        self.sum(|s| &s.latency_sum_nanos)
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

/// Process-wide counters, rendered as Prometheus text by [`Metrics::render`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// By backend, then event name; nested so that a publish looks its counter up with
    /// `&str`, under a read lock, and allocates only for a new pair. The counters are leaked,
    /// so that a publish holds one without a reference count: there is one per event name,
    /// and they are counted for the life of the process anyway.
    published: RwLock<BTreeMap<String, BTreeMap<String, &'static AtomicU64>>>,
    dropped: AtomicU64,
    skipped: Mutex<BTreeMap<(String, String), u64>>,
    /// Duplicates an idempotent handler did not run, by topic and group.
    duplicates: Mutex<BTreeMap<(String, String), u64>>,
    /// Requests acknowledged unhandled because their deadline had passed, by topic and
    /// handler.
    expired_requests: Mutex<BTreeMap<(String, String), u64>>,
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

impl Metrics {
    /// The counter of messages published on `backend` as `event`, looked up before the
    /// publish so that the message need not be kept (nor its event name copied) until it is
    /// acknowledged; add to it then.
    pub(crate) fn published_counter(
        &self,
        backend: &str,
        event: Option<&str>,
    ) -> &'static AtomicU64 {
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
                .or_insert_with(|| Box::leak(Box::default()))
        })
    }

    pub(crate) fn record_dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// Counts an acknowledged message that no handler took, with the reason.
    pub(crate) fn record_skipped(&self, topic: &str, reason: &str) {
        *lock(&self.skipped)
            .entry((topic.to_owned(), reason.to_owned()))
            .or_default() += 1;
    }

    pub(crate) fn set_backend(&self, backend: &str) {
        *lock(&self.backend) = Some(backend.to_owned());
    }

    pub(crate) fn register_handler(
        &self,
        topic: &str,
        handler: &str,
        lanes: usize,
    ) -> Arc<HandlerMetrics> {
        let m = Arc::new(HandlerMetrics::new(lanes));
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
            .map_or(0, |n| n.load(Relaxed))
    }

    /// Duplicates of `topic` that the idempotent handlers of `group` acknowledged without
    /// running (`messaging_duplicates_total`).
    pub fn duplicates(&self, topic: &str, group: &str) -> u64 {
        lock(&self.duplicates)
            .get(&(topic.to_owned(), group.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn record_duplicate(&self, topic: &str, group: &str) {
        *lock(&self.duplicates)
            .entry((topic.to_owned(), group.to_owned()))
            .or_default() += 1;
    }

    pub(crate) fn record_expired_request(&self, topic: &str, handler: &str) {
        *lock(&self.expired_requests)
            .entry((topic.to_owned(), handler.to_owned()))
            .or_default() += 1;
    }

    /// Requests to `topic` that `handler` acknowledged without running because their
    /// deadline had passed (`messaging_requests_expired_total`).
    pub fn expired_requests(&self, topic: &str, handler: &str) -> u64 {
        lock(&self.expired_requests)
            .get(&(topic.to_owned(), handler.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn record_late_reply(&self) {
        self.late_replies.fetch_add(1, Relaxed);
    }

    /// Replies that arrived after their requester had stopped waiting, and were dropped
    /// (`messaging_late_replies_total`).
    pub fn late_replies(&self) -> u64 {
        self.late_replies.load(Relaxed)
    }

    /// Acknowledged messages that no handler took, by topic and reason.
    pub fn skipped(&self, topic: &str, reason: &str) -> u64 {
        lock(&self.skipped)
            .get(&(topic.to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE messaging_published_total counter");
        for (backend, event, n) in read(&self.published)
            .iter()
            .flat_map(|(b, events)| events.iter().map(move |(e, n)| (b, e, n)))
        {
            let _ = writeln!(
                out,
                "messaging_published_total{{backend=\"{}\",event=\"{}\"}} {}",
                esc(backend),
                esc(event),
                n.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# TYPE messaging_events_dropped_total counter");
        let _ = writeln!(out, "messaging_events_dropped_total {}", self.dropped());
        let _ = writeln!(out, "# TYPE messaging_skipped_total counter");
        for ((topic, reason), n) in lock(&self.skipped).iter() {
            let _ = writeln!(
                out,
                "messaging_skipped_total{{topic=\"{}\",reason=\"{}\"}} {n}",
                esc(topic),
                esc(reason)
            );
        }
        let _ = writeln!(out, "# TYPE messaging_duplicates_total counter");
        for ((topic, group), n) in lock(&self.duplicates).iter() {
            let _ = writeln!(
                out,
                "messaging_duplicates_total{{topic=\"{}\",group=\"{}\"}} {n}",
                esc(topic),
                esc(group)
            );
        }
        let _ = writeln!(out, "# TYPE messaging_requests_expired_total counter");
        for ((topic, handler), n) in lock(&self.expired_requests).iter() {
            let _ = writeln!(
                out,
                "messaging_requests_expired_total{{topic=\"{}\",handler=\"{}\"}} {n}",
                esc(topic),
                esc(handler)
            );
        }
        let _ = writeln!(out, "# TYPE messaging_late_replies_total counter");
        let _ = writeln!(out, "messaging_late_replies_total {}", self.late_replies());
        let handlers = lock(&self.handlers);
        let _ = writeln!(out, "# TYPE messaging_handled_total counter");
        for (topic, handler, m) in handlers.iter() {
            let labels = format!("topic=\"{}\",handler=\"{}\"", esc(topic), esc(handler));
            let ok = m.succeeded();
            let dead = m.dead_lettered();
            let _ = writeln!(
                out,
                "messaging_handled_total{{{labels},outcome=\"ok\"}} {ok}"
            );
            let _ = writeln!(
                out,
                "messaging_handled_total{{{labels},outcome=\"dead_lettered\"}} {dead}"
            );
        }
        for (name, pick) in [
            (
                "messaging_retried_total",
                HandlerMetrics::retried as fn(&HandlerMetrics) -> u64,
            ),
            (
                "messaging_dead_lettered_total",
                HandlerMetrics::dead_lettered,
            ),
            ("messaging_handler_attempts_total", HandlerMetrics::attempts),
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
        let _ = writeln!(out, "# TYPE messaging_handler_duration_seconds histogram");
        for (topic, handler, m) in handlers.iter() {
            let labels = format!("topic=\"{}\",handler=\"{}\"", esc(topic), esc(handler));
            let buckets = m.latency_buckets();
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "messaging_handler_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let total: u64 = buckets.iter().sum();
            let _ = writeln!(
                out,
                "messaging_handler_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
            );
            let sum = m.latency_sum_nanos() as f64 / 1e9;
            let _ = writeln!(
                out,
                "messaging_handler_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "messaging_handler_duration_seconds_count{{{labels}}} {total}"
            );
        }
        crate::lag::render(&mut out);
        if let Some(backend) = lock(&self.backend).as_ref() {
            let _ = writeln!(out, "# TYPE messaging_backend gauge");
            let _ = writeln!(out, "messaging_backend{{backend=\"{}\"}} 1", esc(backend));
        }
        out
    }
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
    }

    #[test]
    fn latencies_fall_in_their_buckets_and_sum_in_nanoseconds() {
        let handler = HandlerMetrics::new(2);
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
}
