//! Counters: what was published, handled, retried, dead-lettered and dropped. Per-handler
//! counters are plain atomics created at start-up, so the hot path takes no lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the handler latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Counters of one handler on one topic.
#[derive(Debug, Default)]
pub struct HandlerMetrics {
    /// Handler calls (every attempt).
    pub attempts: AtomicU64,
    /// Messages handled successfully.
    pub succeeded: AtomicU64,
    /// Retries scheduled.
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// One counter per bucket plus one for slower calls; the count is their sum.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
}

impl HandlerMetrics {
    pub(crate) fn observe_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Relaxed);
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
    /// By backend, then event name; nested so the hot path looks up with `&str` and allocates
    /// only for a new pair.
    published: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    dropped: AtomicU64,
    skipped: Mutex<BTreeMap<(String, String), u64>>,
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

impl Metrics {
    pub(crate) fn record_published(&self, backend: &str, event: Option<&str>) {
        let event = event.unwrap_or("");
        let mut published = lock(&self.published);
        if let Some(count) = published
            .get_mut(backend)
            .and_then(|events| events.get_mut(event))
        {
            *count += 1;
            return;
        }
        *published
            .entry(backend.to_owned())
            .or_default()
            .entry(event.to_owned())
            .or_default() += 1;
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

    pub(crate) fn register_handler(&self, topic: &str, handler: &str) -> Arc<HandlerMetrics> {
        let m = Arc::new(HandlerMetrics::default());
        lock(&self.handlers).push((topic.to_owned(), handler.to_owned(), Arc::clone(&m)));
        m
    }

    /// Counters summed over every handler.
    pub fn handler_totals(&self) -> HandlerTotals {
        let mut totals = HandlerTotals::default();
        for (_, _, m) in lock(&self.handlers).iter() {
            totals.attempts += m.attempts.load(Relaxed);
            totals.succeeded += m.succeeded.load(Relaxed);
            totals.retried += m.retried.load(Relaxed);
            totals.dead_lettered += m.dead_lettered.load(Relaxed);
        }
        totals
    }

    /// Events dropped by the background publisher (`messaging_events_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Messages published through this process's producers, by backend and event name.
    pub fn published(&self, backend: &str, event: &str) -> u64 {
        lock(&self.published)
            .get(backend)
            .and_then(|events| events.get(event))
            .copied()
            .unwrap_or(0)
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
        for (backend, event, n) in lock(&self.published)
            .iter()
            .flat_map(|(b, events)| events.iter().map(move |(e, n)| (b, e, n)))
        {
            let _ = writeln!(
                out,
                "messaging_published_total{{backend=\"{}\",event=\"{}\"}} {n}",
                esc(backend),
                esc(event)
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
        let handlers = lock(&self.handlers);
        let _ = writeln!(out, "# TYPE messaging_handled_total counter");
        for (topic, handler, m) in handlers.iter() {
            let labels = format!("topic=\"{}\",handler=\"{}\"", esc(topic), esc(handler));
            let ok = m.succeeded.load(Relaxed);
            let dead = m.dead_lettered.load(Relaxed);
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
                (|m: &HandlerMetrics| m.retried.load(Relaxed)) as fn(&HandlerMetrics) -> u64,
            ),
            ("messaging_dead_lettered_total", |m| {
                m.dead_lettered.load(Relaxed)
            }),
            ("messaging_handler_attempts_total", |m| {
                m.attempts.load(Relaxed)
            }),
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
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&m.latency_buckets) {
                cumulative += count.load(Relaxed);
                let _ = writeln!(
                    out,
                    "messaging_handler_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let total: u64 = m.latency_buckets.iter().map(|b| b.load(Relaxed)).sum();
            let _ = writeln!(
                out,
                "messaging_handler_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}"
            );
            let sum = m.latency_sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "messaging_handler_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "messaging_handler_duration_seconds_count{{{labels}}} {total}"
            );
        }
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
