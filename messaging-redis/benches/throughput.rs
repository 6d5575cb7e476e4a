//! Publish and consume throughput of the framework against raw `redis` on the same Redis, with
//! the same batch size and in-flight window, plus publish→handler latency. Needs Redis on
//! 127.0.0.1:6379 (scripts/start-redis.sh).
//!
//! Run with: cargo bench -p messaging-redis --bench throughput
//! (`BENCH_MESSAGES`, default 100000; `BENCH_ROUNDS`, default 3; `REDIS_URL`.)
//!
//! - publish: N entries of about 200 bytes, at most `WINDOW` awaiting their `XADD` reply at
//!   once; framework = `Producer::send_raw` over `RedisBroker`, raw = `XADD` on a multiplexed
//!   connection.
//! - consume: N entries already in a stream, drained by a fresh group with `COUNT` `BATCH`;
//!   framework = the runtime running a handler (batch size `BATCH`), until every entry is
//!   handled and acknowledged; raw = `XREADGROUP … COUNT BATCH BLOCK` then one `XACK` of the
//!   batch's ids, sent without waiting for it before the next read (as the framework's are),
//!   until the last `XACK` returned.
//! - latency: entries published at a steady rate, timed from before `XADD` to the handler
//!   (framework) or to the reply of the blocking `XREADGROUP` (raw).
//!
//! Rounds alternate raw and framework; the best round of each is reported, as the machine is
//! shared.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use messaging_core::{
    Broker as _, Config, HandlerSpec, Invocation, OutgoingMessage, Producer, Runtime,
};
use messaging_redis::{PAYLOAD_FIELD, RedisBroker};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::{Mutex, Notify};

const BATCH: usize = 256;
const WINDOW: usize = 256;
const PAYLOAD: usize = 200;
const LATENCY_MESSAGES: usize = 10_000;
const LATENCY_RATE_PER_MS: usize = 2;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// About 200 bytes of JSON carrying its index and the nanoseconds since the bench's epoch.
fn payload(i: usize, sent_ns: u128) -> Vec<u8> {
    let head = format!(r#"{{"i":{i},"sent_ns":{sent_ns},"pad":""#);
    let mut body = head.into_bytes();
    body.resize(PAYLOAD - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn sent_ns(body: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"sent_ns\":")? + "\"sent_ns\":".len();
    let end = start + text[start..].find(',')?;
    text[start..end].parse().ok()
}

struct Bench {
    id: String,
    n: usize,
    broker: RedisBroker,
    raw: MultiplexedConnection,
    client: redis::Client,
    epoch: Instant,
}

async fn run() -> Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let n = env_number("BENCH_MESSAGES", 100_000);
    let rounds = env_number("BENCH_ROUNDS", 3).max(1);
    let broker = RedisBroker::connect_url(&url)
        .await
        .map_err(|e| format!("Redis must run on {url} (scripts/start-redis.sh): {e}"))?;
    let client = redis::Client::open(url.as_str())?;
    let raw = client.get_multiplexed_async_connection().await?;
    let bench = Bench {
        id: format!("{:08x}", fastrand::u32(..)),
        n,
        broker,
        raw,
        client,
        epoch: Instant::now(),
    };
    println!(
        "Redis Streams: {n} messages of {PAYLOAD} bytes, batch {BATCH}, window {WINDOW}, best of {rounds} rounds"
    );

    let (mut raw_pub, mut fw_pub) = (Best::default(), Best::default());
    let (mut raw_con, mut fw_con, mut alone) = (Best::default(), Best::default(), Best::default());
    for round in 0..rounds {
        raw_pub.add(bench.raw_publish_round(round).await?);
        fw_pub.add(bench.framework_publish_round(round).await?);
        raw_con.add(bench.raw_consume_round(round).await?);
        fw_con.add(bench.framework_consume_round(round).await?);
        alone.add(bench.broker_consume_round(round).await?);
        println!(
            "  round {round}: best so far: publish raw {:.0}/s fw {:.0}/s, consume raw {:.0}/s fw {:.0}/s, RedisConsumer alone {:.0}/s",
            raw_pub.rate, fw_pub.rate, raw_con.rate, fw_con.rate, alone.rate
        );
    }
    println!(
        "(rate: best round; CPU: this process's CPU time per message, least of the rounds; Redis's own CPU not included)"
    );
    compare("publish", "framework", &raw_pub, &fw_pub);
    compare("consume", "framework", &raw_con, &fw_con);
    compare(
        "consume",
        "RedisConsumer alone (next_batch + ack, no runtime)",
        &raw_con,
        &alone,
    );

    let mut raw_lat = bench.raw_latency().await?;
    let mut fw_lat = bench.framework_latency().await?;
    raw_lat.sort_unstable();
    fw_lat.sort_unstable();
    println!(
        "latency  at {} msg/s, {LATENCY_MESSAGES} messages: raw p50 {:?} p99 {:?}; framework p50 {:?} p99 {:?}",
        LATENCY_RATE_PER_MS * 1000,
        percentile(&raw_lat, 50),
        percentile(&raw_lat, 99),
        percentile(&fw_lat, 50),
        percentile(&fw_lat, 99)
    );
    Ok(())
}

/// Throughput and CPU cost of one measured run.
struct Sample {
    rate: f64,
    cpu_us: f64,
}

/// The best of the rounds: highest rate, least CPU per message.
struct Best {
    rate: f64,
    cpu_us: f64,
}

impl Default for Best {
    fn default() -> Self {
        Self {
            rate: 0.0,
            cpu_us: f64::INFINITY,
        }
    }
}

impl Best {
    fn add(&mut self, sample: Sample) {
        self.rate = self.rate.max(sample.rate);
        self.cpu_us = self.cpu_us.min(sample.cpu_us);
    }
}

fn compare(what: &str, name: &str, raw: &Best, framework: &Best) {
    println!(
        "{what:8} raw {:>9.0} msg/s {:>5.2} µs CPU/msg | {name} {:>9.0} msg/s {:>5.2} µs CPU/msg | ratio {:.3}",
        raw.rate,
        raw.cpu_us,
        framework.rate,
        framework.cpu_us,
        framework.rate / raw.rate
    );
}

/// Wall clock and CPU time of this process (every thread), from the start of a run.
struct Clock {
    wall: Instant,
    cpu_ns: u64,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu_ns: cpu_ns(),
        }
    }

    fn sample(&self, messages: usize) -> Sample {
        let secs = self.wall.elapsed().as_secs_f64();
        let cpu = cpu_ns().saturating_sub(self.cpu_ns) as f64;
        Sample {
            rate: messages as f64 / secs,
            cpu_us: cpu / 1000.0 / messages as f64,
        }
    }
}

/// Nanoseconds on a CPU so far, summed over this process's threads (Linux schedstat).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples[((samples.len() - 1) * p / 100).min(samples.len() - 1)]
}

impl Bench {
    fn stream(&self, what: &str, round: usize) -> String {
        format!("bench.{}.{what}.{round}", self.id)
    }

    async fn delete(&self, stream: &str) -> Result<()> {
        redis::cmd("DEL")
            .arg(stream)
            .exec_async(&mut self.raw.clone())
            .await?;
        Ok(())
    }

    async fn raw_publish_all(&self, stream: &str, count: usize) -> Result<()> {
        let body = payload(0, 0);
        let mut sends = futures::stream::iter(0..count)
            .map(|_| {
                let mut conn = self.raw.clone();
                let body = &body;
                async move {
                    redis::cmd("XADD")
                        .arg(stream)
                        .arg("*")
                        .arg(PAYLOAD_FIELD)
                        .arg(&body[..])
                        .query_async::<String>(&mut conn)
                        .await
                }
            })
            .buffer_unordered(WINDOW);
        while let Some(result) = sends.next().await {
            result?;
        }
        Ok(())
    }

    async fn framework_publish_all(
        &self,
        producer: &Producer,
        stream: &str,
        count: usize,
    ) -> Result<()> {
        let body = bytes::Bytes::from(payload(0, 0));
        let mut sends = futures::stream::iter(0..count)
            .map(|_| producer.send_raw(OutgoingMessage::new(stream, body.clone())))
            .buffer_unordered(WINDOW);
        while let Some(result) = sends.next().await {
            result?;
        }
        Ok(())
    }

    async fn raw_publish_round(&self, round: usize) -> Result<Sample> {
        let stream = self.stream("raw-pub", round);
        let clock = Clock::start();
        self.raw_publish_all(&stream, self.n).await?;
        let rate = clock.sample(self.n);
        self.delete(&stream).await?;
        Ok(rate)
    }

    async fn framework_publish_round(&self, round: usize) -> Result<Sample> {
        let stream = self.stream("fw-pub", round);
        let producer = Producer::new(self.broker.clone().into_dyn(), Config::default());
        let clock = Clock::start();
        self.framework_publish_all(&producer, &stream, self.n)
            .await?;
        let rate = clock.sample(self.n);
        self.delete(&stream).await?;
        Ok(rate)
    }

    async fn raw_consume_round(&self, round: usize) -> Result<Sample> {
        let stream = self.stream("raw-con", round);
        self.raw_publish_all(&stream, self.n).await?;
        // A connection of its own for the blocking reads, as the framework has.
        let mut reader = self.client.get_multiplexed_async_connection().await?;
        let mut conn = self.raw.clone();
        let clock = Clock::start();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("g")
            .arg("0")
            .query_async(&mut conn)
            .await?;
        let options = StreamReadOptions::default()
            .group("g", "raw")
            .count(BATCH)
            .block(100);
        let mut received = 0;
        let mut checksum = 0usize;
        let mut acks = Vec::new();
        while received < self.n {
            let reply: StreamReadReply =
                redis::AsyncCommands::xread_options(&mut reader, &[&stream], &[">"], &options)
                    .await?;
            for key in reply.keys {
                let ids: Vec<&str> = key.ids.iter().map(|e| e.id.as_str()).collect();
                for entry in &key.ids {
                    // "Handle" it: look at the body, as the framework's handler does.
                    if let Some(redis::Value::BulkString(body)) = entry.map.get(PAYLOAD_FIELD) {
                        checksum += body.len();
                    }
                }
                received += ids.len();
                // Not awaited before the next read: the raw loop pipelines its XACKs too.
                let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
                let (mut conn, stream) = (conn.clone(), stream.clone());
                acks.push(tokio::spawn(async move {
                    redis::AsyncCommands::xack::<_, _, _, usize>(&mut conn, &stream, "g", &ids)
                        .await
                }));
            }
        }
        for ack in acks {
            ack.await??;
        }
        let rate = clock.sample(self.n);
        assert_eq!(checksum, self.n * PAYLOAD);
        self.delete(&stream).await?;
        Ok(rate)
    }

    async fn framework_consume_round(&self, round: usize) -> Result<Sample> {
        let stream = self.stream("fw-con", round);
        self.raw_publish_all(&stream, self.n).await?;
        let handled = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Notify::new());
        let handler = {
            let (handled, done, n) = (handled.clone(), done.clone(), self.n);
            HandlerSpec::new("bench", [stream.clone()], move |inv: Invocation| {
                let (handled, done) = (handled.clone(), done.clone());
                async move {
                    std::hint::black_box(inv.message.payload.len());
                    if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        done.notify_one();
                    }
                    Ok(())
                }
            })
            .group("g")
        };
        let clock = Clock::start();
        let runtime = Runtime::builder()
            .broker(self.broker.clone().into_dyn())
            .without_registered()
            .install_global_producer(false)
            .from_beginning(true)
            .batch_size(BATCH)
            .handler(handler)
            .start()
            .await?;
        done.notified().await;
        // Counted only once everything is acknowledged too, as the raw loop's last XACK is.
        let mut conn = self.raw.clone();
        loop {
            let (pending, ..): (usize, Option<String>, Option<String>, redis::Value) =
                redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg("g")
                    .query_async(&mut conn)
                    .await?;
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let rate = clock.sample(self.n);
        runtime.shutdown().await?;
        self.delete(&stream).await?;
        Ok(rate)
    }

    /// The broker's consumer driven directly (`next_batch` + `ack`), without the runtime's
    /// dispatcher: what this crate costs on its own.
    async fn broker_consume_round(&self, round: usize) -> Result<Sample> {
        let stream = self.stream("broker-con", round);
        self.raw_publish_all(&stream, self.n).await?;
        let clock = Clock::start();
        let mut consumer = self
            .broker
            .subscribe(messaging_core::Subscription {
                group: "g".into(),
                topics: vec![stream.clone()],
                start: messaging_core::StartFrom::Earliest,
                prefetch: BATCH,
            })
            .await?;
        let acker = consumer.acker();
        let mut received = 0;
        while received < self.n {
            for message in consumer.next_batch(BATCH).await? {
                std::hint::black_box(message.payload.len());
                acker.ack(&message).await?;
                received += 1;
            }
        }
        // `close` waits until every acknowledgement was sent.
        consumer.close().await?;
        let rate = clock.sample(self.n);
        self.delete(&stream).await?;
        Ok(rate)
    }

    /// Publishes `LATENCY_MESSAGES` at `LATENCY_RATE_PER_MS` per millisecond with `publish`.
    async fn steady<F, Fut>(&self, publish: F) -> Result<()>
    where
        F: Fn(usize, Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut i = 0;
        while i < LATENCY_MESSAGES {
            tick.tick().await;
            for _ in 0..LATENCY_RATE_PER_MS.min(LATENCY_MESSAGES - i) {
                publish(i, payload(i, self.epoch.elapsed().as_nanos())).await?;
                i += 1;
            }
        }
        Ok(())
    }

    async fn raw_latency(&self) -> Result<Vec<Duration>> {
        let stream = self.stream("raw-lat", 0);
        let mut conn = self.raw.clone();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("g")
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await?;
        let samples = Arc::new(Mutex::new(Vec::with_capacity(LATENCY_MESSAGES)));
        let consumer = {
            let (samples, stream, epoch) = (samples.clone(), stream.clone(), self.epoch);
            let mut reader = self.client.get_multiplexed_async_connection().await?;
            let mut conn = self.raw.clone();
            tokio::spawn(async move {
                let options = StreamReadOptions::default()
                    .group("g", "raw")
                    .count(BATCH)
                    .block(1000);
                let mut received = 0;
                while received < LATENCY_MESSAGES {
                    let reply: StreamReadReply = redis::AsyncCommands::xread_options(
                        &mut reader,
                        &[&stream],
                        &[">"],
                        &options,
                    )
                    .await?;
                    let now = epoch.elapsed().as_nanos();
                    for key in reply.keys {
                        let mut samples = samples.lock().await;
                        for entry in &key.ids {
                            if let Some(redis::Value::BulkString(body)) =
                                entry.map.get(PAYLOAD_FIELD)
                                && let Some(sent) = sent_ns(body)
                            {
                                samples.push(Duration::from_nanos((now - sent) as u64));
                            }
                        }
                        received += key.ids.len();
                        let ids: Vec<&str> = key.ids.iter().map(|e| e.id.as_str()).collect();
                        let _: usize =
                            redis::AsyncCommands::xack(&mut conn, &stream, "g", &ids).await?;
                    }
                }
                Ok::<_, redis::RedisError>(())
            })
        };
        self.steady(|_, body| {
            let mut conn = self.raw.clone();
            let stream = &stream;
            async move {
                redis::cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg(PAYLOAD_FIELD)
                    .arg(body)
                    .query_async::<String>(&mut conn)
                    .await?;
                Ok(())
            }
        })
        .await?;
        consumer.await??;
        self.delete(&stream).await?;
        let samples = samples.lock().await.clone();
        Ok(samples)
    }

    async fn framework_latency(&self) -> Result<Vec<Duration>> {
        let stream = self.stream("fw-lat", 0);
        let samples = Arc::new(Mutex::new(Vec::with_capacity(LATENCY_MESSAGES)));
        let handler = {
            let (samples, epoch) = (samples.clone(), self.epoch);
            HandlerSpec::new("latency", [stream.clone()], move |inv: Invocation| {
                let samples = samples.clone();
                async move {
                    let now = epoch.elapsed().as_nanos();
                    if let Some(sent) = sent_ns(&inv.message.payload) {
                        samples
                            .lock()
                            .await
                            .push(Duration::from_nanos((now - sent) as u64));
                    }
                    Ok(())
                }
            })
            .group("g")
        };
        let runtime = Runtime::builder()
            .broker(self.broker.clone().into_dyn())
            .without_registered()
            .install_global_producer(false)
            .batch_size(BATCH)
            .handler(handler)
            .start()
            .await?;
        let producer = Producer::new(self.broker.clone().into_dyn(), Config::default());
        self.steady(|_, body| {
            let producer = producer.clone();
            let stream = &stream;
            async move {
                producer
                    .send_raw(OutgoingMessage::new(stream, body))
                    .await?;
                Ok(())
            }
        })
        .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while samples.lock().await.len() < LATENCY_MESSAGES && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runtime.shutdown().await?;
        self.delete(&stream).await?;
        let samples = samples.lock().await.clone();
        Ok(samples)
    }
}
