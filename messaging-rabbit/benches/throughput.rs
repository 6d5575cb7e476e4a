//! Publish and consume throughput of the framework against raw lapin on the same RabbitMQ,
//! with the same prefetch, publisher confirms, persistence and in-flight window, plus
//! publish→handler latency. Needs RabbitMQ on 127.0.0.1:5672 (scripts/start-rabbitmq.sh).
//!
//! Run with: cargo bench -p messaging-rabbit --bench throughput
//! (`BENCH_MESSAGES`, default 100000; `BENCH_ROUNDS`, default 2; `BENCH_PHASES`, default
//! `publish,consume,latency`; `BENCH_CONCURRENCY`, the runtime's, default 16;
//! `RABBITMQ_URL`.)
//!
//! - publish: N messages of about 200 bytes, at most `WINDOW` awaiting their confirm at once;
//!   framework = `Producer::send_raw` over `RabbitBroker`, raw = `basic_publish` + confirm.
//! - consume: N messages already in a queue, drained with prefetch `PREFETCH` and one
//!   `basic.ack` per message; framework = the runtime running a handler (concurrency 16),
//!   raw = one lapin consumer whose acks are in flight concurrently.
//! - latency: messages published at a steady rate, timed from before `publish` to the
//!   handler (framework) or to the delivery in the consumer stream (raw).
//!
//! Rounds alternate which goes first, with pauses between timed phases; the best round of
//! each is reported, as the machine is shared.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use messaging_core::message::header;
use messaging_core::{
    Broker, Config, HandlerSpec, Invocation, OutgoingMessage, Producer, StartFrom, Subscription,
};
use messaging_rabbit::{RabbitBroker, RabbitOptions};
use tokio::sync::{Mutex, Notify};

const EXCHANGE: &str = "messaging-bench";
const PREFETCH: usize = 256;
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

/// About 200 bytes of JSON carrying its index and the nanoseconds since `epoch`.
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
    url: String,
    id: String,
    n: usize,
    broker: RabbitBroker,
    producer: Producer,
    raw_publish: Channel,
}

async fn run() -> Result<()> {
    let url = std::env::var("RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let n = env_number("BENCH_MESSAGES", 100_000);
    let rounds = env_number("BENCH_ROUNDS", 2).max(1);
    let phases =
        std::env::var("BENCH_PHASES").unwrap_or_else(|_| "publish,consume,latency".to_owned());
    let id = format!("{}", std::process::id());
    let broker = RabbitBroker::connect(
        RabbitOptions::new(&url)
            .exchange(EXCHANGE)
            .connection_name("messaging-bench framework"),
    )
    .await
    .map_err(|e| format!("RabbitMQ is not reachable at {url}: {e}"))?;
    let producer = Producer::new(broker.clone().into_dyn(), Config::default());
    let raw = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name("messaging-bench raw".into()),
    )
    .await?;
    let raw_publish = raw.create_channel().await?;
    raw_publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    raw_publish
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // The channel keeps its connection open.
    let bench = Bench {
        url,
        id,
        n,
        broker,
        producer,
        raw_publish,
    };

    println!(
        "RabbitMQ throughput: {n} messages of {PAYLOAD} bytes, prefetch {PREFETCH}, {WINDOW} publishes in flight, persistent, confirmed"
    );
    // [raw, framework] per round.
    let (mut publish, mut consume) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first, and delete queues only between timed phases: RabbitMQ
        // reclaiming 100 000 persistent messages would otherwise slow whoever comes next.
        let mut queues = Vec::new();
        let (mut pubs, mut cons) = ([Phase::default(); 2], [Phase::default(); 2]);
        for raw_turn in [round % 2 == 0, round % 2 == 1] {
            if !phases.contains("publish") {
                break;
            }
            settle().await;
            if raw_turn {
                pubs[0] = bench.raw_publish_round(round, &mut queues).await?;
            } else {
                pubs[1] = bench.framework_publish_round(round, &mut queues).await?;
            }
        }
        bench.delete_all(&mut queues).await?;
        for raw_turn in [round % 2 == 0, round % 2 == 1] {
            if !phases.contains("consume") {
                break;
            }
            if raw_turn {
                cons[0] = bench.raw_consume_round(round, &mut queues).await?;
            } else {
                cons[1] = bench.framework_consume_round(round, &mut queues).await?;
            }
        }
        bench.delete_all(&mut queues).await?;
        println!(
            "round {}: publish raw {} framework {} | consume raw {} framework {}",
            round + 1,
            pubs[0],
            pubs[1],
            cons[0],
            cons[1]
        );
        publish.push(pubs);
        consume.push(cons);
    }
    for (what, runs) in [("publish", &publish), ("consume", &consume)] {
        if runs.iter().all(|r| r[0].rate == 0.0) {
            continue;
        }
        let best = |i: usize| {
            runs.iter()
                .map(|r| r[i])
                .fold(Phase::default(), Phase::best)
        };
        let (raw, fw) = (best(0), best(1));
        println!(
            "{what}: best raw {raw}, best framework {fw}, ratio {:.3}",
            fw.rate / raw.rate
        );
    }

    if !phases.contains("latency") {
        return Ok(());
    }
    let raw_latency = bench.raw_latency().await?;
    let fw_latency = bench.framework_latency().await?;
    println!(
        "latency publish->handler at {}/s: framework p50 {:?} p99 {:?} | raw p50 {:?} p99 {:?}",
        LATENCY_RATE_PER_MS * 1000,
        percentile(&fw_latency, 50),
        percentile(&fw_latency, 99),
        percentile(&raw_latency, 50),
        percentile(&raw_latency, 99)
    );
    Ok(())
}

/// Throughput of one timed phase, and the client's CPU time per message in it (both the
/// client and RabbitMQ run on this machine, so CPU spent here is taken from the broker).
#[derive(Clone, Copy, Debug, Default)]
struct Phase {
    rate: f64,
    cpu_per_message: Duration,
}

impl Phase {
    fn best(self, other: Phase) -> Phase {
        if other.rate > self.rate { other } else { self }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.0} msg/s ({:>5.1} µs CPU/msg)",
            self.rate,
            self.cpu_per_message.as_secs_f64() * 1e6
        )
    }
}

struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    fn phase(&self, messages: usize) -> Phase {
        let elapsed = self.wall.elapsed().as_secs_f64();
        let cpu = process_cpu().saturating_sub(self.cpu);
        Phase {
            rate: messages as f64 / elapsed,
            cpu_per_message: cpu / messages.max(1) as u32,
        }
    }
}

/// User + system time of this process so far (Linux `/proc/self/stat`, 100 ticks a second).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

/// Lets RabbitMQ finish background work (queue deletion, message store) between phases.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn raw_properties(i: usize) -> BasicProperties {
    // What the framework sends: persistent, the key and an event name as string headers.
    let mut headers = FieldTable::default();
    headers.insert(
        header::EVENT_NAME.into(),
        AMQPValue::LongString(LongString::from("bench.event")),
    );
    headers.insert(
        header::KEY.into(),
        AMQPValue::LongString(LongString::from(format!("k{}", i % 64))),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
}

fn framework_message(topic: &str, i: usize, sent_ns: u128) -> OutgoingMessage {
    OutgoingMessage::new(topic, payload(i, sent_ns))
        .with_key(format!("k{}", i % 64))
        .with_header(header::EVENT_NAME, "bench.event")
}

impl Bench {
    fn topic(&self, what: &str, round: usize) -> String {
        format!("bench.{}.{what}.{round}", self.id)
    }

    /// A durable queue bound to `topic` on the bench exchange, for the raw runs.
    async fn raw_queue(&self, topic: &str) -> Result<String> {
        let queue = format!("{EXCHANGE}.raw.{topic}");
        let ch = &self.raw_publish;
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            queue.as_str().into(),
            EXCHANGE.into(),
            topic.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(queue)
    }

    async fn delete(&self, queue: &str) -> Result<()> {
        self.raw_publish
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        Ok(())
    }

    async fn delete_all(&self, queues: &mut Vec<String>) -> Result<()> {
        for queue in queues.drain(..) {
            self.delete(&queue).await?;
        }
        Ok(())
    }

    async fn raw_publish_all(&self, topic: &str, count: usize) -> Result<()> {
        let results: Vec<_> = futures::stream::iter(0..count)
            .map(|i| async move {
                let confirm = self
                    .raw_publish
                    .basic_publish(
                        EXCHANGE.into(),
                        topic.into(),
                        BasicPublishOptions::default(),
                        &payload(i, 0),
                        raw_properties(i),
                    )
                    .await?;
                if confirm.await?.is_nack() {
                    return Err::<(), Box<dyn std::error::Error + Send + Sync>>("nack".into());
                }
                Ok(())
            })
            .buffer_unordered(WINDOW)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn framework_publish_all(&self, topic: &str, count: usize) -> Result<()> {
        let results: Vec<_> = futures::stream::iter(0..count)
            .map(|i| self.producer.send_raw(framework_message(topic, i, 0)))
            .buffer_unordered(WINDOW)
            .collect()
            .await;
        for result in results {
            result?;
        }
        Ok(())
    }

    async fn raw_publish_round(&self, round: usize, queues: &mut Vec<String>) -> Result<Phase> {
        let topic = self.topic("raw-pub", round);
        queues.push(self.raw_queue(&topic).await?);
        let started = Clock::start();
        self.raw_publish_all(&topic, self.n).await?;
        Ok(started.phase(self.n))
    }

    async fn framework_publish_round(
        &self,
        round: usize,
        queues: &mut Vec<String>,
    ) -> Result<Phase> {
        let topic = self.topic("fw-pub", round);
        self.broker
            .declare_topics(std::slice::from_ref(&topic))
            .await?;
        queues.push(self.broker.topic_queue(&topic)?);
        let started = Clock::start();
        self.framework_publish_all(&topic, self.n).await?;
        Ok(started.phase(self.n))
    }

    /// One `basic.ack` per delivery, like the framework, without waiting for each ack before
    /// taking the next delivery (the framework acks from its lanes concurrently too).
    async fn raw_consume_round(&self, round: usize, queues: &mut Vec<String>) -> Result<Phase> {
        let topic = self.topic("raw-con", round);
        let queue = self.raw_queue(&topic).await?;
        queues.push(queue.clone());
        self.raw_publish_all(&topic, self.n).await?;
        settle().await;
        let started = Clock::start();
        let conn = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(PREFETCH as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut acks = futures::stream::FuturesUnordered::new();
        let (mut received, mut acked) = (0, 0);
        while acked < self.n {
            tokio::select! {
                delivery = consumer.next(), if received < self.n => {
                    let Some(delivery) = delivery else { return Err("consumer ended".into()) };
                    let acker = delivery?.acker;
                    acks.push(async move { acker.ack(BasicAckOptions::default()).await });
                    received += 1;
                }
                Some(ack) = acks.next() => {
                    ack?;
                    acked += 1;
                }
            }
        }
        let rate = started.phase(self.n);
        conn.close(200, "done".into()).await?;
        Ok(rate)
    }

    async fn framework_consume_round(
        &self,
        round: usize,
        queues: &mut Vec<String>,
    ) -> Result<Phase> {
        let topic = self.topic("fw-con", round);
        let group = format!("bench-{}-{round}", self.id);
        // The group's queue exists before the messages are published, as after a first start.
        let consumer = self
            .broker
            .subscribe(Subscription {
                group: group.clone(),
                topics: vec![topic.clone()],
                start: StartFrom::Latest,
                prefetch: PREFETCH,
            })
            .await?;
        drop(consumer);
        queues.push(self.broker.group_queue(&group)?);
        queues.push(self.broker.topic_queue(&format!("{topic}.dlq"))?);
        self.framework_publish_all(&topic, self.n).await?;
        settle().await;
        let done = Arc::new(Notify::new());
        let handled = Arc::new(AtomicUsize::new(0));
        let n = self.n;
        let handler = HandlerSpec::new("bench_consume", [topic.clone()], {
            let (done, handled) = (Arc::clone(&done), Arc::clone(&handled));
            move |_inv: Invocation| {
                let (done, handled) = (Arc::clone(&done), Arc::clone(&handled));
                async move {
                    if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        done.notify_one();
                    }
                    Ok(())
                }
            }
        })
        .group(&group);
        let started = Clock::start();
        let runtime = messaging_core::Runtime::builder()
            .broker(self.broker.clone().into_dyn())
            .config(Config::default())
            .without_registered()
            .install_global_producer(false)
            .batch_size(PREFETCH)
            .concurrency(env_number("BENCH_CONCURRENCY", 16))
            .handler(handler)
            .start()
            .await?;
        done.notified().await;
        let rate = started.phase(self.n);
        runtime.shutdown().await?;
        Ok(rate)
    }

    /// Publishes `LATENCY_MESSAGES` at a steady rate, each stamped with its send time.
    async fn steady<F, Fut>(&self, epoch: Instant, publish: F) -> Result<()>
    where
        F: Fn(usize, u128) -> Fut,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut tasks = tokio::task::JoinSet::new();
        let mut i = 0;
        while i < LATENCY_MESSAGES {
            tick.tick().await;
            for _ in 0..LATENCY_RATE_PER_MS {
                tasks.spawn(publish(i, epoch.elapsed().as_nanos()));
                i += 1;
            }
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        Ok(())
    }

    async fn raw_latency(&self) -> Result<Vec<Duration>> {
        let topic = self.topic("raw-lat", 0);
        let queue = self.raw_queue(&topic).await?;
        let conn = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(PREFETCH as u16, BasicQosOptions::default())
            .await?;
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let epoch = Instant::now();
        let reader = tokio::spawn(async move {
            let mut samples = Vec::with_capacity(LATENCY_MESSAGES);
            while samples.len() < LATENCY_MESSAGES {
                let Some(delivery) = consumer.next().await else {
                    break;
                };
                let delivery = delivery?;
                let now = epoch.elapsed().as_nanos();
                if let Some(sent) = sent_ns(&delivery.data) {
                    samples.push(Duration::from_nanos((now - sent) as u64));
                }
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok::<_, lapin::Error>(samples)
        });
        let channel = self.raw_publish.clone();
        self.steady(epoch, |i, sent| {
            let (channel, topic) = (channel.clone(), topic.clone());
            async move {
                let confirm = channel
                    .basic_publish(
                        EXCHANGE.into(),
                        topic.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload(i, sent),
                        raw_properties(i),
                    )
                    .await?;
                confirm.await?;
                Ok(())
            }
        })
        .await?;
        let samples = reader.await??;
        conn.close(200, "done".into()).await?;
        self.delete(&queue).await?;
        Ok(samples)
    }

    async fn framework_latency(&self) -> Result<Vec<Duration>> {
        let topic = self.topic("fw-lat", 0);
        let group = format!("bench-{}-latency", self.id);
        let samples = Arc::new(Mutex::new(Vec::with_capacity(LATENCY_MESSAGES)));
        let done = Arc::new(Notify::new());
        let epoch = Instant::now();
        let handler = HandlerSpec::new("bench_latency", [topic.clone()], {
            let (samples, done) = (Arc::clone(&samples), Arc::clone(&done));
            move |inv: Invocation| {
                let (samples, done) = (Arc::clone(&samples), Arc::clone(&done));
                async move {
                    let now = epoch.elapsed().as_nanos();
                    if let Some(sent) = sent_ns(&inv.message.payload) {
                        let mut samples = samples.lock().await;
                        samples.push(Duration::from_nanos((now - sent) as u64));
                        if samples.len() == LATENCY_MESSAGES {
                            done.notify_one();
                        }
                    }
                    Ok(())
                }
            }
        })
        .group(&group);
        let runtime = messaging_core::Runtime::builder()
            .broker(self.broker.clone().into_dyn())
            .config(Config::default())
            .without_registered()
            .install_global_producer(false)
            .batch_size(PREFETCH)
            .concurrency(env_number("BENCH_CONCURRENCY", 16))
            .handler(handler)
            .start()
            .await?;
        let producer = self.producer.clone();
        self.steady(epoch, |i, sent| {
            let (producer, topic) = (producer.clone(), topic.clone());
            async move {
                Ok(producer
                    .send_raw(framework_message(&topic, i, sent))
                    .await?)
            }
        })
        .await?;
        done.notified().await;
        runtime.shutdown().await?;
        self.delete(&self.broker.group_queue(&group)?).await?;
        self.delete(&self.broker.topic_queue(&format!("{topic}.dlq"))?)
            .await?;
        let samples = samples.lock().await.clone();
        Ok(samples)
    }
}
