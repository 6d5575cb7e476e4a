//! In-memory dispatch against a bare decode: 1 000 000 envelopes of about 200 bytes to a typed
//! handler (`Event<OrderCreated>`), through the whole runtime (memory broker fetch, routing,
//! decode, handler call, retry bookkeeping, metrics, acknowledgement), against
//! `serde_json::from_slice` of the same bytes into the same type, in the same run.
//!
//! Messages arrive in rounds of `CHUNK` (default 10 000): each round is appended to a broker
//! (not timed) and then consumed (timed) — by the runtime, or by the bare loop reading a
//! broker filled the same way — so both read freshly written bytes, as a consumer does with
//! what it just received. `CHUNK=1000000` stores everything first: then both paths read cold
//! memory, and the framework, which touches more of each message, pays more cache misses.
//!
//! Run with: cargo bench -p messaging-core --bench dispatch
//! (`MESSAGES=100000` for a shorter run, `CONCURRENCY=16` for the lane pipeline.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use messaging_core::{
    Config, EnvelopeFields, Event, HandlerSpec, MemoryBroker, OutgoingMessage, Runtime,
    decode_event, message::header,
};
use serde::{Deserialize, Serialize};

const TOPIC: &str = "orders.created";

#[derive(Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
    user_id: u64,
    total: f64,
    currency: String,
}

fn envelopes(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let data = OrderCreated {
                order_id: i as u64,
                user_id: (i % 1000) as u64,
                total: 99.5,
                currency: "EUR".to_owned(),
            };
            serde_json::to_vec(&Event::new("order.created", data, "bench-service")).unwrap()
        })
        .collect()
}

/// A round's messages as a publisher hands them over: fresh allocations, not yet stored.
fn outgoing(bodies: &[Vec<u8>]) -> Vec<OutgoingMessage> {
    bodies
        .iter()
        .map(|body| {
            OutgoingMessage::new(TOPIC, body.clone())
                .with_header(header::EVENT_NAME, "order.created")
        })
        .collect()
}

/// CPU time of every thread of this process, in nanoseconds (Linux `schedstat`); other
/// processes' load on the shared cores does not count in it, unlike in wall time.
fn cpu_time() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

#[derive(Clone, Copy, Default)]
struct Spent {
    wall: Duration,
    cpu: Duration,
}

impl Spent {
    fn add(&mut self, wall: Instant, cpu: Duration) {
        self.wall += wall.elapsed();
        self.cpu += cpu_time() - cpu;
    }
}

/// Decodes each round's messages straight from a freshly filled broker.
fn bare(chunks: &[Vec<Vec<u8>>]) -> Spent {
    let mut spent = Spent::default();
    let mut checksum = 0u64;
    for chunk in chunks {
        let broker = MemoryBroker::new();
        broker.append_all(outgoing(chunk));
        let stored = broker.messages(TOPIC);
        let (wall, cpu) = (Instant::now(), cpu_time());
        for message in &stored {
            let event: Event<OrderCreated> = serde_json::from_slice(&message.payload).unwrap();
            checksum = checksum.wrapping_add(event.data.order_id);
        }
        spent.add(wall, cpu);
    }
    std::hint::black_box(checksum);
    spent
}

/// One runtime; each round is appended, then the clock runs until its last handler call.
async fn framework(chunks: &[Vec<Vec<u8>>], concurrency: usize, multi: bool) -> Spent {
    let broker = MemoryBroker::new();
    let handled = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = HandlerSpec::new("process_order", [TOPIC], {
        let (handled, target, done) =
            (Arc::clone(&handled), Arc::clone(&target), Arc::clone(&done));
        move |inv| {
            let (handled, target, done) =
                (Arc::clone(&handled), Arc::clone(&target), Arc::clone(&done));
            async move {
                let event: Event<OrderCreated> =
                    decode_event(&inv.message, &EnvelopeFields::STANDARD)?;
                std::hint::black_box(event.data.order_id);
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == target.load(Ordering::Relaxed) {
                    done.notify_one();
                }
                Ok(())
            }
        }
    });
    let runtime = Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(broker.clone()))
        .without_registered()
        .install_global_producer(false)
        .concurrency(concurrency)
        .handler(handler)
        .start()
        .await
        .unwrap();
    let mut spent = Spent::default();
    for chunk in chunks {
        target.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let notified = done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let messages = outgoing(chunk);
        // On the one-thread runtime the consumer cannot run before this task awaits, so the
        // clock starts after the round is stored, as it does for the bare loop. On two
        // workers it must start before: then storing counts against the framework.
        let (mut wall, mut cpu) = (Instant::now(), cpu_time());
        broker.append_all(messages);
        if !multi {
            (wall, cpu) = (Instant::now(), cpu_time());
        }
        notified.await;
        spent.add(wall, cpu);
    }
    assert_eq!(
        handled.load(Ordering::Relaxed),
        target.load(Ordering::Relaxed)
    );
    runtime.shutdown().await.unwrap();
    spent
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("MESSAGES", 1_000_000);
    let chunk = env("CHUNK", 10_000).clamp(1, n);
    let concurrency = env("CONCURRENCY", 1);
    let bodies = envelopes(n);
    let mean_len = bodies.iter().map(Vec::len).sum::<usize>() / n;
    let chunks: Vec<Vec<Vec<u8>>> = bodies.chunks(chunk).map(<[Vec<u8>]>::to_vec).collect();
    drop(bodies);
    // One thread, like the bare loop: the messages are stored and dispatched on the same core.
    // (`RUNTIME=multi` runs two workers; then each round's bytes move between cores.)
    let multi = std::env::var("RUNTIME").as_deref() == Ok("multi");
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .unwrap();
    // A warm-up of each, then five alternating rounds; each path's best is kept.
    bare(&chunks[..1]);
    rt.block_on(framework(&chunks[..1], concurrency, multi));
    let (mut best_bare, mut best_framework) = ([Duration::MAX; 2], [Duration::MAX; 2]);
    for _ in 0..5 {
        let b = bare(&chunks);
        let f = rt.block_on(framework(&chunks, concurrency, multi));
        best_bare = [best_bare[0].min(b.wall), best_bare[1].min(b.cpu)];
        best_framework = [best_framework[0].min(f.wall), best_framework[1].min(f.cpu)];
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "messages: {n} in rounds of {chunk}, mean envelope: {mean_len} bytes, concurrency: {concurrency}, best of 5"
    );
    println!(
        "bare serde_json::from_slice::<Event<OrderCreated>>: wall {:>7.1} ms ({:>9.0} msg/s), cpu {:>7.1} ms",
        ms(best_bare[0]),
        rate(best_bare[0]),
        ms(best_bare[1])
    );
    println!(
        "messaging memory dispatch:                         wall {:>7.1} ms ({:>9.0} msg/s), cpu {:>7.1} ms",
        ms(best_framework[0]),
        rate(best_framework[0]),
        ms(best_framework[1])
    );
    println!(
        "ratio framework / bare: wall {:.2}, cpu {:.2}",
        best_framework[0].as_secs_f64() / best_bare[0].as_secs_f64(),
        best_framework[1].as_secs_f64() / best_bare[1].as_secs_f64()
    );
}
