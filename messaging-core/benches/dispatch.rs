//! In-memory dispatch against a bare decode: 1 000 000 envelopes of about 200 bytes to a typed
//! handler (`Event<OrderCreated>`), through the whole runtime (memory broker fetch, routing,
//! decode, handler call, retry bookkeeping, acknowledgement), against `serde_json::from_slice`
//! of the same bytes into the same type, in the same run.
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
            let event = Event::new("order.created", data, "bench-service");
            serde_json::to_vec(&event).unwrap()
        })
        .collect()
}

fn bare(bodies: &[Vec<u8>]) -> Duration {
    let started = Instant::now();
    let mut checksum = 0u64;
    for body in bodies {
        let event: Event<OrderCreated> = serde_json::from_slice(body).unwrap();
        checksum = checksum.wrapping_add(event.data.order_id);
    }
    std::hint::black_box(checksum);
    started.elapsed()
}

async fn framework(bodies: &[Vec<u8>], concurrency: usize) -> Duration {
    let broker = MemoryBroker::new();
    let topic = "orders.created";
    for body in bodies {
        let message = OutgoingMessage::new(topic, body.clone())
            .with_header(header::EVENT_NAME, "order.created");
        broker.append(message);
    }
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let total = bodies.len() as u64;
    let handler = HandlerSpec::new("process_order", [topic], {
        let (handled, done) = (Arc::clone(&handled), Arc::clone(&done));
        move |inv| {
            let (handled, done) = (Arc::clone(&handled), Arc::clone(&done));
            async move {
                let event: Event<OrderCreated> =
                    decode_event(&inv.message, &EnvelopeFields::STANDARD)?;
                std::hint::black_box(event.data.order_id);
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    done.notify_one();
                }
                Ok(())
            }
        }
    });
    let started = Instant::now();
    let runtime = Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(broker.clone()))
        .without_registered()
        .install_global_producer(false)
        .from_beginning(true)
        .concurrency(concurrency)
        .handler(handler)
        .start()
        .await
        .unwrap();
    done.notified().await;
    let elapsed = started.elapsed();
    runtime.shutdown().await.unwrap();
    assert_eq!(handled.load(Ordering::Relaxed), total);
    elapsed
}

fn main() {
    let n: usize = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let concurrency: usize = std::env::var("CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let bodies = envelopes(n);
    let mean_len = bodies.iter().map(Vec::len).sum::<usize>() / n;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Warm up both paths once, then alternate three rounds and keep each path's best.
    bare(&bodies[..n.min(50_000)]);
    rt.block_on(framework(&bodies[..n.min(50_000)], concurrency));
    let (mut best_bare, mut best_framework) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        best_bare = best_bare.min(bare(&bodies));
        best_framework = best_framework.min(rt.block_on(framework(&bodies, concurrency)));
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("messages: {n}, mean envelope: {mean_len} bytes, concurrency: {concurrency}");
    println!(
        "bare serde_json::from_slice::<Event<OrderCreated>>: {:>8.1} ms  {:>10.0} msg/s",
        best_bare.as_secs_f64() * 1e3,
        rate(best_bare)
    );
    println!(
        "messaging memory dispatch:                         {:>8.1} ms  {:>10.0} msg/s",
        best_framework.as_secs_f64() * 1e3,
        rate(best_framework)
    );
    println!(
        "ratio (framework time / bare decode time): {:.2}",
        best_framework.as_secs_f64() / best_bare.as_secs_f64()
    );
}
