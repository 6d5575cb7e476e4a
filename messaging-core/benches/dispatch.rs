//! In-memory dispatch against a bare decode: 1 000 000 envelopes of about 200 bytes to a typed
//! handler (`Event<OrderCreated>`), through the whole runtime (memory broker fetch, routing,
//! decode, handler call, retry bookkeeping, metrics, acknowledgement), against
//! `serde_json::from_slice` of the same bytes into the same type, in the same run.
//!
//! Messages arrive in rounds of `CHUNK` (default 10 000): each round is appended to a broker
//! (not timed) and then consumed (timed) — by the runtime, or by the bare loop reading a
//! broker filled the same way — so both read freshly written bytes, as a consumer does with
//! what it just received. The two sides take turns round by round. `CHUNK=1000000` stores everything first: then both paths read cold
//! memory, and the framework, which touches more of each message, pays more cache misses.
//!
//! Run with: cargo bench -p messaging-core --bench dispatch
//! (`MESSAGES=100000` for a shorter run, `CONCURRENCY=16` for the lane pipeline,
//! `HANDLER=noop` for the framework's own cost with a handler that does nothing, `ONLY=bare`
//! or `ONLY=framework` to profile one side, `RECORDER=prometheus` to count through the
//! Prometheus exporter's recorder as the `consumer` binary does: without a recorder the
//! `metrics` facade's calls do nothing.)

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

/// A round's messages as a publisher hands them over: fresh allocations, not yet stored,
/// with the headers `publish_event` adds (the event name and id).
fn outgoing(bodies: &[Vec<u8>]) -> Vec<OutgoingMessage> {
    bodies
        .iter()
        .map(|body| {
            // The envelope's id, which serializes first: `{"id":"<36 characters>",…`.
            assert!(body.starts_with(b"{\"id\":\""), "the id comes first");
            let id = std::str::from_utf8(&body[7..43]).unwrap();
            OutgoingMessage::new(TOPIC, body.clone())
                .with_header(header::EVENT_NAME, "order.created")
                .with_header(header::EVENT_ID, id)
        })
        .collect()
}

/// CPU time of this process (`CLOCK_PROCESS_CPUTIME_ID`), exact to the call; other
/// processes' load on the shared cores does not count in it, unlike in wall time. (Until
/// 2026-12-02 it was read from `/proc/self/task/*/schedstat`, which the kernel brings up to
/// date only at ticks and switches: off by up to a tick at each reading, and rounds last
/// about one tick.)
fn cpu_time() -> Duration {
    cpu_time::ProcessTime::try_now()
        .map(|t| t.as_duration())
        .unwrap_or_default()
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

    fn plus(&mut self, other: Spent) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

/// Decodes one round's messages straight from a freshly filled broker. Taking them from the
/// broker is timed, as the framework's fetch is: taken before the clock starts, the copy of
/// the list would bring every message's first cache line in for the bare loop alone.
fn bare_round(chunk: &[Vec<u8>]) -> Spent {
    let broker = MemoryBroker::new();
    broker.append_all(outgoing(chunk));
    let mut spent = Spent::default();
    let mut checksum = 0u64;
    let (wall, cpu) = (Instant::now(), cpu_time());
    let stored = broker.messages(TOPIC);
    for message in &stored {
        let event: Event<OrderCreated> = serde_json::from_slice(&message.payload).unwrap();
        checksum = checksum.wrapping_add(event.data.order_id);
    }
    spent.add(wall, cpu);
    std::hint::black_box(checksum);
    spent
}

/// A runtime with one typed handler on a memory broker of its own.
struct Framework {
    broker: MemoryBroker,
    runtime: Runtime,
    /// Messages appended so far.
    target: Arc<AtomicU64>,
    /// The order id of the current round's last message: the typed handler reports the
    /// round done when it sees it (all messages share one lane, so it comes last).
    last_order: Arc<AtomicU64>,
    done: Arc<tokio::sync::Notify>,
    multi: bool,
}

impl Framework {
    async fn start(concurrency: usize, multi: bool, noop: bool) -> Self {
        let broker = MemoryBroker::new();
        let handled = Arc::new(AtomicU64::new(0));
        let target = Arc::new(AtomicU64::new(0));
        let last_order = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(tokio::sync::Notify::new());
        // The handler does its work when called and returns a ready future, so it needs no
        // clones of its counters per message: the bench measures the framework, not the
        // handler. The typed handler does what the bare loop does (decode, read the order
        // id) and one comparison to find the round's end, not a locked count per message.
        // `noop` skips the decode and counts: what is left is the framework's own cost.
        let handler = HandlerSpec::borrowing("process_order", [TOPIC], {
            let (handled, target, last_order, done) = (
                Arc::clone(&handled),
                Arc::clone(&target),
                Arc::clone(&last_order),
                Arc::clone(&done),
            );
            move |inv| {
                let result = if noop {
                    std::hint::black_box(&inv);
                    if handled.fetch_add(1, Ordering::Relaxed) + 1 == target.load(Ordering::Relaxed)
                    {
                        done.notify_one();
                    }
                    Ok(())
                } else {
                    decode_event::<OrderCreated>(&inv.message, &EnvelopeFields::STANDARD).map(
                        |event| {
                            let order_id = std::hint::black_box(event.data.order_id);
                            if order_id == last_order.load(Ordering::Relaxed) {
                                done.notify_one();
                            }
                        },
                    )
                };
                std::future::ready(result)
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
        Self {
            broker,
            runtime,
            target,
            last_order,
            done,
            multi,
        }
    }

    /// Appends one round, then the clock runs until its last handler call.
    async fn round(&self, chunk: &[Vec<u8>]) -> Spent {
        self.target.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let last: OrderCreated =
            serde_json::from_slice::<Event<OrderCreated>>(&chunk[chunk.len() - 1])
                .unwrap()
                .data;
        self.last_order.store(last.order_id, Ordering::Relaxed);
        let notified = self.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let messages = outgoing(chunk);
        // On the one-thread runtime the consumer cannot run before this task awaits, so the
        // clock starts after the round is stored, as it does for the bare loop. On two
        // workers it must start before: then storing counts against the framework.
        let (mut wall, mut cpu) = (Instant::now(), cpu_time());
        self.broker.append_all(messages);
        if !self.multi {
            (wall, cpu) = (Instant::now(), cpu_time());
        }
        notified.await;
        let mut spent = Spent::default();
        spent.add(wall, cpu);
        spent
    }

    async fn stop(self) {
        // Every message was handled successfully (not only each round's last).
        let counters = self.runtime.handler_metrics("process_order");
        self.runtime.shutdown().await.unwrap();
        assert_eq!(counters[0].succeeded(), self.target.load(Ordering::Relaxed));
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PASSES: usize = 5;

/// The recorder of the `consumer` binary (`metrics::install_prometheus`): the exporter with
/// our buckets, drained every 5 s by a thread of its own.
fn install_prometheus() {
    use messaging_core::metrics::{END_TO_END_BUCKETS, LATENCY_BUCKETS, names};
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::HANDLER_DURATION.into()),
            &LATENCY_BUCKETS,
        )
        .unwrap()
        .set_buckets_for_metric(Matcher::Full(names::END_TO_END.into()), &END_TO_END_BUCKETS)
        .unwrap()
        .install_recorder()
        .unwrap();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            handle.run_upkeep();
        }
    });
}

fn main() {
    let n = env("MESSAGES", 1_000_000);
    let recorder = std::env::var("RECORDER").unwrap_or_default();
    if recorder == "prometheus" {
        install_prometheus();
    }
    let chunk = env("CHUNK", 10_000).clamp(1, n);
    let concurrency = env("CONCURRENCY", 1);
    let noop = std::env::var("HANDLER").as_deref() == Ok("noop");
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
    // `ONLY=bare` or `ONLY=framework` runs one side, for profiling it alone.
    let only = std::env::var("ONLY").unwrap_or_default();
    let (run_bare, run_framework) = (only != "framework", only != "bare");
    // Five passes over all rounds. Within a pass the two sides take turns round by round
    // (and turns at going first), so that the slow drifts of a shared machine fall on both;
    // the best pass of each side is kept. The first round of each pass is a warm-up.
    let (mut best_bare, mut best_framework) = ([Duration::MAX; 2], [Duration::MAX; 2]);
    let mut ratios = Vec::new();
    for _ in 0..PASSES {
        let framework = rt.block_on(Framework::start(concurrency, multi, noop));
        rt.block_on(framework.round(&chunks[0]));
        bare_round(&chunks[0]);
        let (mut b, mut f) = (Spent::default(), Spent::default());
        for (i, chunk) in chunks.iter().enumerate() {
            let bare_first = i % 2 == 0;
            if run_bare && bare_first {
                b.plus(bare_round(chunk));
            }
            if run_framework {
                f.plus(rt.block_on(framework.round(chunk)));
            }
            if run_bare && !bare_first {
                b.plus(bare_round(chunk));
            }
        }
        rt.block_on(framework.stop());
        ratios.push(f.cpu.as_secs_f64() / b.cpu.as_secs_f64());
        best_bare = [best_bare[0].min(b.wall), best_bare[1].min(b.cpu)];
        best_framework = [best_framework[0].min(f.wall), best_framework[1].min(f.cpu)];
    }
    ratios.sort_by(f64::total_cmp);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let handler = if noop { "no-op" } else { "typed" };
    println!(
        "messages: {n} in rounds of {chunk}, mean envelope: {mean_len} bytes, concurrency: {concurrency}, {handler} handler, recorder: {}, best of {PASSES} passes",
        if recorder.is_empty() {
            "none"
        } else {
            &recorder
        }
    );
    println!(
        "bare serde_json::from_slice::<Event<OrderCreated>>: wall {:>7.1} ms ({:>9.0} msg/s), cpu {:>7.1} ms",
        ms(best_bare[0]),
        rate(best_bare[0]),
        ms(best_bare[1])
    );
    println!(
        "messaging memory dispatch:                         wall {:>7.1} ms ({:>9.0} msg/s), cpu {:>7.1} ms ({:.0} ns/msg)",
        ms(best_framework[0]),
        rate(best_framework[0]),
        ms(best_framework[1]),
        best_framework[1].as_nanos() as f64 / n as f64
    );
    println!(
        "ratio framework / bare: wall {:.2}, cpu {:.2} (cpu per pass: {})",
        best_framework[0].as_secs_f64() / best_bare[0].as_secs_f64(),
        best_framework[1].as_secs_f64() / best_bare[1].as_secs_f64(),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
