//! Produce and consume throughput of the framework against raw rdkafka on the same broker,
//! with the same client settings, plus publish→handler latency. Needs a Kafka-protocol
//! broker on 127.0.0.1:9092 (scripts/start-kafka.sh starts Tansu there).
//!
//! Run with: cargo bench -p messaging-kafka --bench throughput
//! (`BENCH_MESSAGES`, default 100000; `BENCH_ROUNDS`, default 2; `KAFKA_BOOTSTRAP_SERVERS`.)
//!
//! - produce: N messages of about 200 bytes with a key, at most `WINDOW` awaiting their
//!   delivery report at once; framework = `Producer::send_raw` over `KafkaBroker`, raw =
//!   `FutureProducer::send` (both idempotent, `acks=all`).
//! - consume: the N messages just produced, read by a new group from the beginning and each
//!   offset stored after handling; framework = the runtime running a counting handler
//!   (default concurrency and batch size), raw = one `StreamConsumer` loop calling
//!   `store_offset_from_message`. Timed from the first message received to the last, so the
//!   group join (seconds on the test broker) is not counted.
//! - latency: `LATENCY_MESSAGES` published at a steady rate, timed from before the publish to
//!   the handler (framework) or to `recv` (raw).
//!
//! Rounds alternate raw and framework; the best round of each is reported, as the machine
//! is shared (the broker runs on the same two cores).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use messaging_core::{Broker, Config, HandlerSpec, Invocation, OutgoingMessage, Producer, Runtime};
use messaging_kafka::KafkaBroker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Notify;

const PAYLOAD: usize = 200;
const WINDOW: usize = 10_000;
const LATENCY_MESSAGES: usize = 5_000;
const LATENCY_INTERVAL: Duration = Duration::from_millis(1);
const PATIENCE: Duration = Duration::from_secs(300);

/// The settings both sides use (the framework adds its own defaults, which are the same:
/// idempotence and `acks=all` for producing, stored offsets and auto-commit for consuming).
const COMMON: &[(&str, &str)] = &[("session.timeout.ms", "6000")];

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

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// About 200 bytes of JSON carrying its index and when it was sent.
fn payload(i: usize, sent_ns: u128) -> Vec<u8> {
    let mut body = format!(r#"{{"i":{i},"sent_ns":{sent_ns},"pad":""#).into_bytes();
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

fn key(i: usize) -> String {
    format!("k{}", i % 64)
}

struct Bench {
    bootstrap: String,
    run: String,
    n: usize,
    broker: KafkaBroker,
    producer: Producer,
    raw_producer: FutureProducer,
}

impl Bench {
    fn name(&self, what: &str, round: usize) -> String {
        format!("bench-{}-{what}-{round}", self.run)
    }

    fn raw_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in COMMON {
            config.set(*k, *v);
        }
        config
    }

    fn raw_consumer(&self, group: &str, topic: &str) -> Result<StreamConsumer> {
        let consumer: StreamConsumer = self
            .raw_config()
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(consumer)
    }

    async fn runtime(&self, handler: HandlerSpec) -> Result<Runtime> {
        Ok(Runtime::builder()
            .broker(self.broker.clone().into_dyn())
            .config(Config::default())
            .without_registered()
            .install_global_producer(false)
            .from_beginning(true)
            .handler(handler)
            .start()
            .await?)
    }

    async fn produce_framework(&self, topic: &str) -> Result<Duration> {
        self.broker.declare_topics(&[topic.to_owned()]).await?;
        let started = Instant::now();
        futures::stream::iter(0..self.n)
            .map(|i| {
                let message = OutgoingMessage::new(topic, payload(i, 0)).with_key(key(i));
                self.producer.send_raw(message)
            })
            .buffer_unordered(WINDOW)
            .try_for_each(|()| async { Ok(()) })
            .await?;
        Ok(started.elapsed())
    }

    async fn produce_raw(&self, topic: &str) -> Result<Duration> {
        self.broker.declare_topics(&[topic.to_owned()]).await?;
        let started = Instant::now();
        futures::stream::iter(0..self.n)
            .map(|i| async move {
                let (body, key) = (payload(i, 0), key(i));
                let record = FutureRecord::to(topic).payload(&body).key(&key);
                self.raw_producer
                    .send(record, Timeout::Never)
                    .await
                    .map(drop)
                    .map_err(|(e, _)| e)
            })
            .buffer_unordered(WINDOW)
            .try_for_each(|()| async { Ok(()) })
            .await?;
        Ok(started.elapsed())
    }

    async fn consume_framework(&self, topic: &str, group: &str) -> Result<Duration> {
        let count = Arc::new(AtomicUsize::new(0));
        let first = Arc::new(OnceLock::new());
        let last = Arc::new(OnceLock::new());
        let done = Arc::new(Notify::new());
        let n = self.n;
        let handler = HandlerSpec::new("count", [topic.to_owned()], {
            let (count, first, last, done) =
                (count.clone(), first.clone(), last.clone(), done.clone());
            move |_inv: Invocation| {
                first.get_or_init(Instant::now);
                if count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    let _ = last.set(Instant::now());
                    done.notify_one();
                }
                async { Ok(()) }
            }
        })
        .group(group);
        let runtime = self.runtime(handler).await?;
        tokio::time::timeout(PATIENCE, done.notified()).await?;
        runtime.shutdown().await?;
        let (first, last): (Instant, Instant) = (
            *first.get().ok_or("no first")?,
            *last.get().ok_or("no last")?,
        );
        Ok(last - first)
    }

    /// The broker's consumer alone, without the runtime: `next_batch` and one `ack` each.
    async fn consume_broker(&self, topic: &str, group: &str) -> Result<Duration> {
        let mut consumer = self
            .broker
            .subscribe(messaging_core::Subscription {
                group: group.to_owned(),
                topics: vec![topic.to_owned()],
                start: messaging_core::StartFrom::Earliest,
                prefetch: 256,
            })
            .await?;
        let acker = consumer.acker();
        let mut first = None;
        let mut seen = 0;
        let consume = async {
            while seen < self.n {
                let batch = consumer.next_batch(256).await?;
                first.get_or_insert_with(Instant::now);
                for message in &batch {
                    acker.ack(message).await?;
                }
                seen += batch.len();
            }
            Ok::<_, messaging_core::BrokerError>(Instant::now())
        };
        let last = tokio::time::timeout(PATIENCE, consume).await??;
        consumer.close().await?;
        Ok(last - first.ok_or("no first")?)
    }

    async fn consume_raw(&self, topic: &str, group: &str) -> Result<Duration> {
        let consumer = self.raw_consumer(group, topic)?;
        let mut first = None;
        let consume = async {
            for _ in 0..self.n {
                let message = consumer.recv().await?;
                first.get_or_insert_with(Instant::now);
                consumer.store_offset_from_message(&message)?;
            }
            Ok::<_, rdkafka::error::KafkaError>(Instant::now())
        };
        let last = tokio::time::timeout(PATIENCE, consume).await??;
        Ok(last - first.ok_or("no first")?)
    }

    async fn latency_framework(&self, topic: &str, group: &str) -> Result<(Duration, Duration)> {
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(LATENCY_MESSAGES)));
        let done = Arc::new(Notify::new());
        let handler = HandlerSpec::new("latency", [topic.to_owned()], {
            let (latencies, done) = (latencies.clone(), done.clone());
            move |inv: Invocation| {
                let now = epoch().elapsed().as_nanos();
                let mut all = latencies.lock().unwrap();
                if let Some(sent) = sent_ns(&inv.message.payload) {
                    all.push(Duration::from_nanos((now - sent) as u64));
                }
                if all.len() == LATENCY_MESSAGES {
                    done.notify_one();
                }
                async { Ok(()) }
            }
        })
        .group(group);
        let runtime = self.runtime(handler).await?;
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        let mut ticker = tokio::time::interval(LATENCY_INTERVAL);
        for i in 0..LATENCY_MESSAGES {
            ticker.tick().await;
            let message = OutgoingMessage::new(&topic, payload(i, epoch().elapsed().as_nanos()))
                .with_key(key(i));
            let producer = producer.clone();
            tokio::spawn(async move { producer.send_raw(message).await });
        }
        tokio::time::timeout(PATIENCE, done.notified()).await?;
        runtime.shutdown().await?;
        let mut all = latencies.lock().unwrap().clone();
        Ok(percentiles(&mut all))
    }

    async fn latency_raw(&self, topic: &str, group: &str) -> Result<(Duration, Duration)> {
        self.broker.declare_topics(&[topic.to_owned()]).await?;
        let consumer = self.raw_consumer(group, topic)?;
        // Joined once the first (warm-up) message arrives.
        self.raw_producer
            .send(
                FutureRecord::<str, [u8]>::to(topic).payload(b"warm-up"),
                Timeout::Never,
            )
            .await
            .map_err(|(e, _)| e)?;
        let warm_up = consumer.recv().await?;
        consumer.store_offset_from_message(&warm_up)?;
        drop(warm_up);
        let publisher = {
            let (producer, topic) = (self.raw_producer.clone(), topic.to_owned());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(LATENCY_INTERVAL);
                for i in 0..LATENCY_MESSAGES {
                    ticker.tick().await;
                    let (producer, topic) = (producer.clone(), topic.clone());
                    let body = payload(i, epoch().elapsed().as_nanos());
                    tokio::spawn(async move {
                        let key = key(i);
                        let record = FutureRecord::to(&topic).payload(&body).key(&key);
                        producer
                            .send(record, Timeout::Never)
                            .await
                            .map(drop)
                            .map_err(|(e, _)| e)
                    });
                }
            })
        };
        let mut all = Vec::with_capacity(LATENCY_MESSAGES);
        let receive = async {
            while all.len() < LATENCY_MESSAGES {
                let message = consumer.recv().await?;
                let now = epoch().elapsed().as_nanos();
                if let Some(sent) = message.payload().and_then(sent_ns) {
                    all.push(Duration::from_nanos((now - sent) as u64));
                }
                consumer.store_offset_from_message(&message)?;
            }
            Ok::<_, rdkafka::error::KafkaError>(())
        };
        tokio::time::timeout(PATIENCE, receive).await??;
        publisher.await?;
        Ok(percentiles(&mut all))
    }
}

fn percentiles(all: &mut [Duration]) -> (Duration, Duration) {
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (at(0.50), at(0.99))
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

async fn run() -> Result<()> {
    epoch();
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let n = env_number("BENCH_MESSAGES", 100_000);
    let rounds = env_number("BENCH_ROUNDS", 2).max(1);
    let mut properties = COMMON.to_vec();
    properties.push(("messaging.topic.replication.factor", "1"));
    let broker = KafkaBroker::connect_with_properties(&bootstrap, properties)
        .await
        .map_err(|e| {
            format!("Kafka is not reachable at {bootstrap} (run scripts/start-kafka.sh): {e}")
        })?;
    let mut raw_config = ClientConfig::new();
    raw_config
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    for (k, v) in COMMON {
        raw_config.set(*k, *v);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let bench = Bench {
        bootstrap,
        run: format!("{:x}", nanos & 0xffff_ffff_ffff),
        n,
        producer: Producer::new(broker.clone().into_dyn(), Config::default()),
        broker,
        raw_producer: raw_config.create()?,
    };
    println!(
        "Kafka throughput: {n} messages of {PAYLOAD} bytes, {rounds} round(s), window {WINDOW}"
    );

    let (mut produce, mut consume) = (
        (Duration::MAX, Duration::MAX),
        (Duration::MAX, Duration::MAX),
    );
    let mut latency = (
        (Duration::MAX, Duration::MAX),
        (Duration::MAX, Duration::MAX),
    );
    for round in 0..rounds {
        let (raw_topic, fw_topic) = (bench.name("raw", round), bench.name("fw", round));
        let raw_p = bench.produce_raw(&raw_topic).await?;
        let fw_p = bench.produce_framework(&fw_topic).await?;
        let raw_c = bench
            .consume_raw(&raw_topic, &bench.name("raw-group", round))
            .await?;
        let fw_c = bench
            .consume_framework(&fw_topic, &bench.name("fw-group", round))
            .await?;
        let broker_c = bench
            .consume_broker(&fw_topic, &bench.name("broker-group", round))
            .await?;
        println!(
            "round {round}: consume by the broker alone {:.0}/s",
            rate(n - 1, broker_c)
        );
        println!(
            "round {round}: produce raw {:.0}/s framework {:.0}/s; consume raw {:.0}/s framework {:.0}/s",
            rate(n, raw_p),
            rate(n, fw_p),
            rate(n - 1, raw_c),
            rate(n - 1, fw_c)
        );
        produce = (produce.0.min(raw_p), produce.1.min(fw_p));
        consume = (consume.0.min(raw_c), consume.1.min(fw_c));
        let raw_l = bench
            .latency_raw(
                &bench.name("lat-raw", round),
                &bench.name("lat-raw-group", round),
            )
            .await?;
        let fw_l = bench
            .latency_framework(
                &bench.name("lat-fw", round),
                &bench.name("lat-fw-group", round),
            )
            .await?;
        println!(
            "round {round}: latency raw p50 {:?} p99 {:?}; framework p50 {:?} p99 {:?}",
            raw_l.0, raw_l.1, fw_l.0, fw_l.1
        );
        if raw_l.0 < latency.0.0 {
            latency.0 = raw_l;
        }
        if fw_l.0 < latency.1.0 {
            latency.1 = fw_l;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| measure | raw rdkafka | framework | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| produce, msg/s | {:.0} | {:.0} | {:.2} |",
        rate(n, produce.0),
        rate(n, produce.1),
        produce.0.as_secs_f64() / produce.1.as_secs_f64()
    );
    println!(
        "| consume, msg/s | {:.0} | {:.0} | {:.2} |",
        rate(n - 1, consume.0),
        rate(n - 1, consume.1),
        consume.0.as_secs_f64() / consume.1.as_secs_f64()
    );
    println!(
        "| publish→handler p50 / p99, ms | {:.1} / {:.1} | {:.1} / {:.1} | |",
        ms(latency.0.0),
        ms(latency.0.1),
        ms(latency.1.0),
        ms(latency.1.1)
    );
    Ok(())
}
