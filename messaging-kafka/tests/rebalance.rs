//! Rebalances never block the service's async runtime (issue 22, done-when 5): the service
//! runs on a current-thread Tokio runtime with a ticker task that records how late each of
//! its 10 ms ticks fires, while its group goes from 2 to 3 members and back to 2 (the other
//! members on runtimes of their own, on other threads) as 20 000 messages flow. No tick is
//! more than 100 ms late (librdkafka's rebalance callbacks, with their blocking requests and
//! the wait for in-flight messages, run on each member's polling thread), and every message
//! is handled at least once. The test's own blocking waits (for a member to start, for a
//! thread to end) run on blocking threads, so that only the client is measured.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test rebalance

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{connect, producer, start, unique};
use messaging_core::{HandlerSpec, Invocation, OutgoingMessage, Runtime};
use tokio::sync::oneshot;

const MESSAGES: usize = 20_000;
const PARTITIONS: u32 = 6;

/// Which messages were handled (by any member), and how many handlings in all.
struct Seen {
    each: Vec<AtomicBool>,
    distinct: AtomicUsize,
    handlings: AtomicUsize,
    /// Handlings per member (A, B, C).
    by_member: [AtomicUsize; 3],
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            each: (0..MESSAGES).map(|_| AtomicBool::new(false)).collect(),
            distinct: AtomicUsize::new(0),
            handlings: AtomicUsize::new(0),
            by_member: Default::default(),
        })
    }

    fn handler(self: &Arc<Self>, topic: &str, group: &str, member: usize) -> HandlerSpec {
        let seen = Arc::clone(self);
        HandlerSpec::new("counted", [topic.to_owned()], move |inv: Invocation| {
            let seen = Arc::clone(&seen);
            async move {
                let n: usize = std::str::from_utf8(&inv.message.payload)?.parse()?;
                seen.handlings.fetch_add(1, Ordering::Relaxed);
                seen.by_member[member].fetch_add(1, Ordering::Relaxed);
                if !seen.each[n].swap(true, Ordering::Relaxed) {
                    seen.distinct.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        })
        .group(group)
    }
}

/// A member on a runtime of its own, on a thread of its own, until `stop` fires.
fn member_on_its_own_thread(
    topic: String,
    group: String,
    member: usize,
    seen: Arc<Seen>,
    started: std::sync::mpsc::Sender<()>,
    stop: oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let broker = connect(PARTITIONS).await;
            let member: Runtime =
                start(&broker, vec![seen.handler(&topic, &group, member)], 8).await;
            started.send(()).unwrap();
            let _ = stop.await;
            member.shutdown().await.unwrap();
        });
    })
}

#[test]
fn a_rebalance_never_delays_the_services_runtime() {
    let topic = unique("rebalance");
    let group = unique("rebalancers");
    let seen = Seen::new();
    let service = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (stop_b, b_stops) = oneshot::channel();
    let (stop_c, c_stops) = oneshot::channel();
    let b = member_on_its_own_thread(
        topic.clone(),
        group.clone(),
        1,
        Arc::clone(&seen),
        started_tx.clone(),
        b_stops,
    );

    let worst = service.block_on(async {
        // The ticker: how late each 10 ms tick fires, the worst kept.
        let worst_tick = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let ticking = Arc::new(AtomicBool::new(true));
        let ticker = tokio::spawn({
            let (worst_tick, ticking) = (Arc::clone(&worst_tick), Arc::clone(&ticking));
            async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(10));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while ticking.load(Ordering::Relaxed) {
                    let due = ticks.tick().await;
                    let late = due.elapsed();
                    let mut worst = worst_tick.lock().unwrap();
                    *worst = (*worst).max(late);
                }
            }
        });

        let broker = connect(PARTITIONS).await;
        let a = start(&broker, vec![seen.handler(&topic, &group, 0)], 8).await;
        // Blocking waits (for B, and the joins below) go to a blocking thread: the ticker
        // runs on this runtime, which must only measure what the client does to it.
        // Kept: C reports on it too.
        let _started = tokio::task::spawn_blocking(move || {
            started
                .recv_timeout(Duration::from_secs(60))
                .expect("B started");
            started
        })
        .await
        .unwrap();

        // 20 000 messages over about 20 s, published from a thread of their own.
        let publisher = std::thread::spawn({
            let topic = topic.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let broker = connect(PARTITIONS).await;
                    let producer = producer(&broker);
                    let began = Instant::now();
                    for chunk in 0..(MESSAGES / 500) {
                        let sends = (chunk * 500..(chunk + 1) * 500).map(|n| {
                            producer.send_raw(
                                OutgoingMessage::new(&topic, n.to_string())
                                    .with_key(format!("k{}", n % 100)),
                            )
                        });
                        for sent in futures::future::join_all(sends).await {
                            sent.expect("published");
                        }
                        let due = began + Duration::from_millis(500 * (chunk as u64 + 1));
                        tokio::time::sleep_until(due.into()).await;
                    }
                });
            }
        });

        // 2 → 3 members after 5 s, back to 2 after 12 s: the scenario's timeline, not waits.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let c = member_on_its_own_thread(
            topic.clone(),
            group.clone(),
            2,
            Arc::clone(&seen),
            started_tx,
            c_stops,
        );
        tokio::time::sleep(Duration::from_secs(7)).await;
        stop_c.send(()).unwrap();

        let deadline = Instant::now() + Duration::from_secs(180);
        while seen.distinct.load(Ordering::Relaxed) < MESSAGES {
            assert!(
                Instant::now() < deadline,
                "only {} of {MESSAGES} messages handled",
                seen.distinct.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::task::spawn_blocking(move || {
            publisher.join().unwrap();
            c.join().unwrap();
        })
        .await
        .unwrap();
        let worst = *worst_tick.lock().unwrap();
        ticking.store(false, Ordering::Relaxed);
        ticker.await.unwrap();
        a.shutdown().await.unwrap();
        worst
    });
    stop_b.send(()).unwrap();
    b.join().unwrap();
    let by_member = seen.by_member.each_ref().map(|n| n.load(Ordering::Relaxed));
    eprintln!(
        "worst tick {worst:?} late; {} handlings of {MESSAGES} messages (A, B, C: {by_member:?})",
        seen.handlings.load(Ordering::Relaxed)
    );
    assert!(
        by_member.iter().all(|n| *n > 0),
        "every member took a share: {by_member:?}"
    );
    assert!(
        worst < Duration::from_millis(100),
        "a tick fired {worst:?} late"
    );
}
