//! Throughput of `Producer::fire` (one bounded queue, one publishing task) against what it
//! replaced, a task spawned per event around `send_raw`, with the broker up: answering at
//! once, and answering after a delay as a networked broker does. A measurement, not a check:
//!
//! ```sh
//! cargo test --release -p messaging-core --test fire_throughput -- --ignored --nocapture
//! # EVENTS (default 200 000), LATENCY_MS (default 0 and 5)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use messaging_core::{
    BoxFuture, Broker, BrokerError, Config, Consumer, OutgoingMessage, Producer, Subscription,
};

/// Acknowledges every publish after `latency`.
struct Answering {
    latency: Duration,
    published: Arc<AtomicUsize>,
}

impl Broker for Answering {
    fn name(&self) -> &'static str {
        "answering"
    }

    fn publish(&self, _message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            self.published.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    fn subscribe(&self, _: Subscription) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Unsupported {
                broker: "answering",
                operation: "subscribe",
            })
        })
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn message(i: usize) -> OutgoingMessage {
    OutgoingMessage::new("throughput.events", vec![b'x'; 200])
        .with_header("x-event-name", "throughput.tick")
        .with_header("x-seq", i.to_string())
}

/// Events per second through `fire`, then through a task per event.
async fn measure(events: usize, latency: Duration) -> (f64, f64) {
    let config = Config::default().with_event_queue(events);
    let published = Arc::new(AtomicUsize::new(0));
    let broker = || {
        Arc::new(Answering {
            latency,
            published: Arc::clone(&published),
        })
    };

    let producer = Producer::new(broker(), config.clone());
    let started = Instant::now();
    for i in 0..events {
        producer.fire(message(i));
    }
    producer
        .flush_within(Duration::from_secs(600))
        .await
        .unwrap();
    let queued = events as f64 / started.elapsed().as_secs_f64();
    assert_eq!(published.swap(0, Ordering::Relaxed), events);

    let producer = Producer::new(broker(), config);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..events {
        let producer = producer.clone();
        tasks.spawn(async move { producer.send_raw(message(i)).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let spawned = events as f64 / started.elapsed().as_secs_f64();
    assert_eq!(published.load(Ordering::Relaxed), events);
    (queued, spawned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
async fn fire_against_a_task_per_event() {
    let events = env("EVENTS", 200_000) as usize;
    let latencies = match std::env::var("LATENCY_MS") {
        Ok(ms) => vec![ms.parse().expect("LATENCY_MS in milliseconds")],
        Err(_) => vec![0, 5],
    };
    for ms in latencies {
        for round in 1..=3 {
            let (queued, spawned) = measure(events, Duration::from_millis(ms)).await;
            eprintln!(
                "latency {ms} ms, round {round}: fire {queued:.0}/s, task per event {spawned:.0}/s, ratio {:.2}",
                queued / spawned
            );
        }
    }
}
