//! Bounded fire-and-forget (issue 23, done-when 3): with the broker down, 100 000 fires keep
//! the process's memory growth under 50 MB, the drops are counted in `/metrics`, and the
//! queued events are delivered once the broker returns. "Down" is tried both ways a broker
//! fails: publishes refused at once, and publishes that hang.
//!
//! The tests take turns: they measure the process's memory and its drop counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use messaging_core::metrics::metrics;
use messaging_core::producer::RETRY_FOR;
use messaging_core::{
    BoxFuture, Broker, BrokerError, BrokerFactory, Config, Consumer, OutgoingMessage, Producer,
    Subscription,
};
use tokio::sync::Notify;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FIRES: usize = 100_000;
const QUEUE: usize = 10_000;

/// A broker that is down until `come_back`: it refuses publishes, or holds them unanswered.
struct Outage {
    hang: bool,
    up: AtomicBool,
    back: Notify,
    delivered: AtomicUsize,
    /// Publishes waiting for an answer right now, and the most there ever were.
    waiting: AtomicUsize,
    most_waiting: AtomicUsize,
}

impl Outage {
    fn new(hang: bool) -> Arc<Self> {
        Arc::new(Self {
            hang,
            up: AtomicBool::new(false),
            back: Notify::new(),
            delivered: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            most_waiting: AtomicUsize::new(0),
        })
    }

    fn come_back(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.back.notify_waiters();
    }
}

struct OutageBroker(Arc<Outage>);

impl Broker for OutageBroker {
    fn name(&self) -> &'static str {
        "outage"
    }

    fn publish(&self, _message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        let outage = &self.0;
        Box::pin(async move {
            if outage.hang {
                let now = outage.waiting.fetch_add(1, Ordering::SeqCst) + 1;
                outage.most_waiting.fetch_max(now, Ordering::SeqCst);
                loop {
                    let back = outage.back.notified();
                    if outage.up.load(Ordering::SeqCst) {
                        break;
                    }
                    back.await;
                }
                outage.waiting.fetch_sub(1, Ordering::SeqCst);
            } else if !outage.up.load(Ordering::SeqCst) {
                return Err(BrokerError::connection("outage", "connection refused"));
            }
            outage.delivered.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn subscribe(&self, _: Subscription) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Unsupported {
                broker: "outage",
                operation: "subscribe",
            })
        })
    }
}

/// The process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// `messaging_events_dropped_total` as `/metrics` renders it.
fn rendered_drops() -> u64 {
    let text = metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix("messaging_events_dropped_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no messaging_events_dropped_total in\n{text}"))
}

/// Waits for `done`, failing after `within`.
async fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn fires_while_down_then_delivered(hang: bool) {
    let outage = Outage::new(hang);
    let config = Config::default().with_event_queue(QUEUE);
    let producer = Producer::new(Arc::new(OutageBroker(Arc::clone(&outage))), config);
    let payload = vec![b'x'; 512];
    let dropped_before = metrics().dropped();
    let rss_before = rss();
    for i in 0..FIRES {
        producer.fire(
            OutgoingMessage::new("outage.events", payload.clone())
                .with_header("x-event-name", "outage.tick")
                .with_header("x-seq", i.to_string()),
        );
    }
    let growth = rss().saturating_sub(rss_before);
    eprintln!(
        "hang={hang}: {FIRES} fires grew the resident memory by {} kB",
        growth / 1024
    );
    assert!(
        growth < 50 * 1024 * 1024,
        "memory grew by {} MB for {FIRES} fires with the broker down",
        growth / (1024 * 1024)
    );

    // Accepted: as many as the queue holds, queued, in flight or waiting to retry.
    let accepted = FIRES - (metrics().dropped() - dropped_before) as usize;
    assert_eq!(accepted, QUEUE, "accepted with a queue of {QUEUE}");
    assert!(
        rendered_drops() >= dropped_before + (FIRES - accepted) as u64,
        "drops counted in /metrics"
    );
    assert_eq!(producer.pending(), accepted, "the rest wait for the broker");
    if hang {
        // Publishes in flight at once, as many as were accepted.
        wait_for("publishes in flight", Duration::from_secs(60), || {
            outage.most_waiting.load(Ordering::SeqCst) == QUEUE
        })
        .await;
    }
    assert_eq!(outage.delivered.load(Ordering::SeqCst), 0);

    outage.come_back();
    producer
        .flush_within(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(producer.pending(), 0, "the queue was flushed");
    assert_eq!(
        outage.delivered.load(Ordering::SeqCst),
        accepted,
        "every queued event delivered once the broker returned"
    );
    assert_eq!(
        metrics().dropped() - dropped_before,
        (FIRES - accepted) as u64,
        "no queued event dropped"
    );
    assert!(outage.most_waiting.load(Ordering::SeqCst) <= QUEUE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_are_queued_bounded_and_delivered_when_the_broker_returns() {
    let _turn = TURN.lock().await;
    fires_while_down_then_delivered(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_publishes_are_queued_bounded_and_delivered_when_the_broker_returns() {
    let _turn = TURN.lock().await;
    fires_while_down_then_delivered(true).await;
}

/// A flush at shutdown stops retrying in time for its deadline: what failed is dropped and
/// counted instead of being retried past it.
#[tokio::test(start_paused = true)]
async fn a_flush_ends_retries_by_its_deadline_and_counts_them_dropped() {
    let _turn = TURN.lock().await;
    let outage = Outage::new(false);
    let producer = Producer::new(
        Arc::new(OutageBroker(Arc::clone(&outage))),
        Config::default(),
    );
    let dropped_before = metrics().dropped();
    for _ in 0..3 {
        producer.fire(OutgoingMessage::new("outage.flush", "{}"));
    }
    let started = tokio::time::Instant::now();
    producer.flush_within(Duration::from_secs(5)).await.unwrap();
    assert!(started.elapsed() <= Duration::from_secs(5));
    assert_eq!(producer.pending(), 0);
    assert_eq!(metrics().dropped() - dropped_before, 3);
    assert_eq!(outage.delivered.load(Ordering::SeqCst), 0);
}

/// A publish that keeps failing is retried for `RETRY_FOR`, then dropped; one that fails
/// for a while is delivered.
#[tokio::test(start_paused = true)]
async fn a_failing_publish_is_retried_then_dropped_after_the_retry_window() {
    let _turn = TURN.lock().await;
    let outage = Outage::new(false);
    let producer = Producer::new(
        Arc::new(OutageBroker(Arc::clone(&outage))),
        Config::default(),
    );
    let dropped_before = metrics().dropped();
    producer.fire(OutgoingMessage::new("outage.window", "{}"));
    let fired = tokio::time::Instant::now();
    wait_for("the event dropped", Duration::from_secs(300), || {
        producer.pending() == 0
    })
    .await;
    let waited = fired.elapsed();
    assert!(
        waited <= RETRY_FOR && waited >= RETRY_FOR - Duration::from_secs(6),
        "dropped after {waited:?}"
    );
    assert_eq!(metrics().dropped() - dropped_before, 1);

    producer.fire(OutgoingMessage::new("outage.window", "{}"));
    // Virtual time (`start_paused`): the 30 s of outage the retry window is measured against.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(producer.pending(), 1, "still retrying after 30 s");
    outage.come_back();
    wait_for("the event delivered", Duration::from_secs(60), || {
        producer.pending() == 0
    })
    .await;
    assert_eq!(outage.delivered.load(Ordering::SeqCst), 1);
    assert_eq!(metrics().dropped() - dropped_before, 1);
}

/// Without a Tokio runtime a fire is dropped and counted, not lost silently.
#[test]
fn a_fire_outside_a_runtime_is_dropped_and_counted() {
    let _turn = TURN.blocking_lock();
    let outage = Outage::new(false);
    outage.come_back();
    let producer = Producer::new(
        Arc::new(OutageBroker(Arc::clone(&outage))),
        Config::default(),
    );
    let dropped_before = metrics().dropped();
    producer.fire(OutgoingMessage::new("outage.none", "{}"));
    assert_eq!(metrics().dropped() - dropped_before, 1);
    assert_eq!(producer.pending(), 0);
}

/// A producer outlives the runtime that ran its publishing task (a test's runtime, a
/// runtime rebuilt by the application): the next fire starts a task on the current one.
#[test]
fn the_publishing_task_is_restarted_on_a_new_runtime() {
    let _turn = TURN.blocking_lock();
    let outage = Outage::new(false);
    outage.come_back();
    let producer = Producer::new(
        Arc::new(OutageBroker(Arc::clone(&outage))),
        Config::default(),
    );
    for round in 1..=2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            producer.fire(OutgoingMessage::new("outage.rounds", "{}"));
            producer
                .flush_within(Duration::from_secs(10))
                .await
                .unwrap();
        });
        assert_eq!(outage.delivered.load(Ordering::SeqCst), round);
    }
}

static CONNECTS: AtomicU32 = AtomicU32::new(0);
static REACHABLE: AtomicBool = AtomicBool::new(false);
static REACHED: std::sync::OnceLock<Arc<Outage>> = std::sync::OnceLock::new();

/// A backend whose connection is refused until `REACHABLE`, then reaches an up broker.
fn connect_refusing(_: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    CONNECTS.fetch_add(1, Ordering::SeqCst);
    Box::pin(async {
        if !REACHABLE.load(Ordering::SeqCst) {
            return Err(BrokerError::connection("refusing", "connection refused"));
        }
        let outage = REACHED.get_or_init(|| Outage::new(false));
        outage.come_back();
        Ok(Arc::new(OutageBroker(Arc::clone(outage))) as Arc<dyn Broker>)
    })
}

inventory::submit! {
    BrokerFactory::new("refusing", connect_refusing)
}

/// A producer that connects on first use (an HTTP service's `get_producer()`): an unreachable
/// broker sees one connection attempt at a time; the events fired then are delivered once it
/// answers within the retry window, and those that waited past it are dropped without a
/// connection attempt each.
#[tokio::test(start_paused = true)]
async fn a_lazy_producer_connects_once_at_a_time_and_delivers_when_the_broker_answers() {
    let _turn = TURN.lock().await;
    let producer = Producer::lazy(Config::default().with_backend("refusing"));
    let dropped_before = metrics().dropped();

    // Answers after 30 s.
    for _ in 0..100 {
        producer.fire(OutgoingMessage::new("outage.lazy", "{}"));
    }
    // Virtual time (`start_paused`): the 30 s of back-off whose connection attempts are counted.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let attempts = CONNECTS.load(Ordering::SeqCst);
    assert!(
        (5..=15).contains(&attempts),
        "{attempts} connection attempts in 30 s of back-off"
    );
    REACHABLE.store(true, Ordering::SeqCst);
    wait_for("delivered", Duration::from_secs(60), || {
        producer.pending() == 0
    })
    .await;
    assert_eq!(REACHED.get().unwrap().delivered.load(Ordering::SeqCst), 100);
    assert_eq!(metrics().dropped(), dropped_before);

    // Never answers: the first event retries for the window, the rest expire with it.
    let producer = Producer::lazy(Config::default().with_backend("refusing"));
    REACHABLE.store(false, Ordering::SeqCst);
    let before = CONNECTS.load(Ordering::SeqCst);
    for _ in 0..100 {
        producer.fire(OutgoingMessage::new("outage.lazy", "{}"));
    }
    wait_for("dropped", RETRY_FOR * 2, || producer.pending() == 0).await;
    let attempts = CONNECTS.load(Ordering::SeqCst) - before;
    assert!(
        attempts < 50,
        "{attempts} connection attempts for 100 events in the {RETRY_FOR:?} window"
    );
    assert_eq!(metrics().dropped() - dropped_before, 100);

    // Shut down while it never answers: the flush ends in time, and the events it could not
    // try are dropped and counted, not tried one connection each.
    let before = CONNECTS.load(Ordering::SeqCst);
    for _ in 0..1_000 {
        producer.fire(OutgoingMessage::new("outage.lazy", "{}"));
    }
    let started = tokio::time::Instant::now();
    producer.flush_within(Duration::from_secs(5)).await.unwrap();
    assert!(started.elapsed() <= Duration::from_secs(5));
    assert_eq!(producer.pending(), 0);
    let attempts = CONNECTS.load(Ordering::SeqCst) - before;
    assert!(
        attempts < 30,
        "{attempts} connection attempts in a 5 s flush"
    );
    assert_eq!(metrics().dropped() - dropped_before, 1_100);
}
