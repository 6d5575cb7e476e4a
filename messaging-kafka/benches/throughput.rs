//! Produce and consume throughput of the framework against raw rdkafka on the same broker,
//! with the same client settings, plus publish→handler latency. Needs a Kafka-protocol
//! broker on 127.0.0.1:9092 (scripts/start-kafka.sh starts Tansu there).
//!
//! Run with: cargo bench -p messaging-kafka --bench throughput
//! (`BENCH_MESSAGES`, default 100000; `BENCH_ROUNDS`, default 9; `KAFKA_BOOTSTRAP_SERVERS`;
//! `BENCH_KAFKA_PROPERTIES="fetch.wait.max.ms=5,linger.ms=1"`: more librdkafka properties for
//! both sides; `BENCH_CONCURRENCY`, the runtime's, default 16; `BENCH_CONSUMERS=framework`
//! (or `raw`, `broker`, `hand`, `headers`, `split`, comma-separated) consumes with those
//! sides only, to profile one: rows whose sides did not run are left out; `BENCH_HEADERS=n`,
//! default 0, puts up to 3 headers on every message, those the framework writes on an event.)
//!
//! - produce: N messages of about 200 bytes with a key, at most `WINDOW` awaiting their
//!   delivery report at once; framework = `Producer::send_raw` over `KafkaBroker`, raw =
//!   `FutureProducer::send` (both idempotent, `acks=all`).
//! - consume: the N messages just produced, read by a new group from the beginning and each
//!   offset stored after handling; framework = the runtime running a counting handler
//!   (default concurrency and batch size), raw = one `StreamConsumer` loop calling
//!   `store_offset_from_message`. Wall and CPU time from the first message received to the
//!   last, so the group join (seconds on the test broker, and about 75 ms of CPU) is not
//!   counted. Also measured: the broker layer alone (`next_batch` and acknowledgements), and
//!   "by hand": raw rdkafka doing what the framework does for a handler, written the plain
//!   way (each record copied out with `detach`, a task per partition, `store_offset` after
//!   handling), and "raw reading headers": the raw loop also asking each record for its
//!   headers, which any consumer that routes or traces by header does (librdkafka allocates
//!   a parse buffer on that call even for a record without headers), and "raw reading
//!   headers split": that loop run by a task per partition queue, on both cores.
//! - latency: `LATENCY_MESSAGES` published at a steady rate, timed from before the publish to
//!   the handler (framework) or to `recv` (raw).
//! - idle: once, after the rounds, the CPU that each side's producer polling thread uses in
//!   `IDLE` with nothing to deliver.
//! - the machine: its CPU over the rounds (/proc/stat), split into this process, the broker
//!   (`tansu`) and the rest, and the time the hypervisor stole, so that a run taken on a
//!   loaded machine shows it.
//!
//! `BENCH_PHASES` (default `produce,consume,latency,idle`) picks the phases; produce always runs,
//! as consume reads what it wrote. Both producers first send a warm-up batch; rounds alternate
//! which side goes first. Reported: each side's best round and median round, and the median
//! of the rounds' own ratios (both sides of a ratio measured minutes apart at most, under the
//! same load). The machine is shared (the broker runs on the same two cores), and a side's
//! rounds spread by up to 3x: its best round is a single lucky one, the paired median is not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use messaging_core::{
    Broker, Config, HandlerError, HandlerSpec, Invocation, OutgoingMessage, Position, Producer,
    Runtime,
};
use messaging_kafka::KafkaBroker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Notify;

const PAYLOAD: usize = 200;
const WINDOW: usize = 10_000;
const LATENCY_MESSAGES: usize = 5_000;
const LATENCY_INTERVAL: Duration = Duration::from_millis(1);
const PATIENCE: Duration = Duration::from_secs(300);
/// How long the idle phase watches the producers' polling threads.
const IDLE: Duration = Duration::from_secs(5);
/// The polling threads' names (as /proc shows them, 15 bytes at most): rdkafka's
/// `ThreadedProducer`'s, in the raw `FutureProducer`, and the framework's producer's.
const RAW_POLLING_THREAD: &str = "producer pollin";
const FRAMEWORK_POLLING_THREAD: &str = "kafka-reports";

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

/// What `BENCH_HEADERS=n` puts on every message (the first n): the headers the framework
/// writes on an event (its name, id and trace id).
const HEADERS: [(&str, &str); 3] = [
    ("x-event-name", "order.created"),
    ("x-event-id", "0190c0e2-7b1a-7c3e-9a4f-5d2e8b6c1f00"),
    ("x-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
];

fn sent_ns(body: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"sent_ns\":")? + "\"sent_ns\":".len();
    let end = start + text[start..].find(',')?;
    text[start..end].parse().ok()
}

/// CPU time of this process so far, all threads (ended ones included: librdkafka's threads
/// of a closed client), from the process's CPU clock. The broker's own CPU is not in it.
fn cpu_time() -> Duration {
    cpu_time::ProcessTime::try_now()
        .map(|t| t.as_duration())
        .unwrap_or_default()
}

/// The entries of a /proc directory (processes, or a process's threads) whose `comm` is
/// `name`.
fn named_in(dir: &str, name: &str) -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(move |path| {
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim_end() == name)
        })
}

/// On-CPU time so far of this process's threads of this name, from /proc's schedstat
/// (nanoseconds, finer than the 10 ms ticks of stat).
fn threads_cpu_time(name: &str) -> Duration {
    named_in("/proc/self/task", name)
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse().ok()
        })
        .map(Duration::from_nanos)
        .sum()
}

/// The machine's CPU time so far, from the first line of /proc/stat (ticks of 10 ms, summed
/// over the cores): busy (user, nice, system, irq, softirq), stolen by the hypervisor, and
/// all of it (idle and iowait too). Read around the rounds, to show how loaded the shared
/// machine was while they ran.
#[derive(Clone, Copy, Default)]
struct MachineTicks {
    busy: u64,
    steal: u64,
    total: u64,
}

impl MachineTicks {
    fn now() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
            return Self::default();
        };
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|field| field.parse().ok())
            .collect();
        let &[user, nice, system, _idle, _iowait, irq, softirq, steal] = &fields[..] else {
            return Self::default();
        };
        Self {
            busy: user + nice + system + irq + softirq,
            steal,
            total: fields.iter().sum(),
        }
    }
}

/// CPU ticks so far (user and system, 10 ms each) of the processes named `tansu`: the test
/// broker, when it runs on this machine.
fn broker_ticks() -> u64 {
    named_in("/proc", "tansu")
        .filter_map(|process| {
            let stat = std::fs::read_to_string(process.join("stat")).ok()?;
            // The fields after the command's closing parenthesis; utime and stime are the
            // 12th and 13th of them.
            let mut after = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
            Some(after.next()?.parse::<u64>().ok()? + after.next()?.parse::<u64>().ok()?)
        })
        .sum()
}

/// A point in time and the process's CPU time so far.
#[derive(Clone, Copy, Debug)]
struct Mark {
    at: Instant,
    cpu: Duration,
}

impl Mark {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            cpu: cpu_time(),
        }
    }

    /// From `first` to this one.
    fn since(self, first: Mark) -> Sample {
        Sample {
            wall: self.at - first.at,
            cpu: self.cpu.saturating_sub(first.cpu),
        }
    }
}

/// One measurement: wall-clock time of the work, and this process's CPU time for it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

impl Sample {
    const NONE: Self = Self {
        wall: Duration::MAX,
        cpu: Duration::MAX,
    };

    /// Whether this side ran (`BENCH_CONSUMERS`, `BENCH_PHASES` may leave it out).
    fn measured(self) -> bool {
        self.wall != Duration::MAX
    }

    /// The best of two samples, each figure on its own.
    fn best(self, other: Self) -> Self {
        Self {
            wall: self.wall.min(other.wall),
            cpu: self.cpu.min(other.cpu),
        }
    }
}

/// One side's samples, a round each (rounds where the side did not run are left out).
#[derive(Clone, Default)]
struct Series(Vec<Sample>);

impl Series {
    fn push(&mut self, sample: Sample) {
        if sample.measured() {
            self.0.push(sample);
        }
    }

    fn measured(&self) -> bool {
        !self.0.is_empty()
    }

    /// The best round, each figure on its own.
    fn best(&self) -> Sample {
        self.0.iter().fold(Sample::NONE, |best, &s| best.best(s))
    }

    /// The median round, each figure on its own ([`Sample::NONE`] for no rounds).
    fn median(&self) -> Sample {
        if !self.measured() {
            return Sample::NONE;
        }
        let median_of = |figure: fn(&Sample) -> Duration| {
            Duration::from_secs_f64(median(self.0.iter().map(|s| figure(s).as_secs_f64())))
        };
        Sample {
            wall: median_of(|s| s.wall),
            cpu: median_of(|s| s.cpu),
        }
    }

    /// Each round's throughput ratio of `self` to `base`, measured in the same round.
    fn ratios_to(&self, base: &Series) -> Vec<f64> {
        self.0
            .iter()
            .zip(&base.0)
            .map(|(s, b)| b.wall.as_secs_f64() / s.wall.as_secs_f64())
            .collect()
    }
}

/// The median (the mean of the middle two of an even count); NaN for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn key(i: usize) -> String {
    format!("k{}", i % 64)
}

fn sizes_total(partitions: &[PartitionCount]) -> usize {
    partitions.iter().map(|p| p.size).sum()
}

/// Messages handled of one partition, on a cache line of its own.
#[repr(align(128))]
struct PartitionCount {
    handled: AtomicUsize,
    size: usize,
}

struct Bench {
    bootstrap: String,
    /// librdkafka properties of both sides.
    properties: Vec<(String, String)>,
    run: String,
    n: usize,
    broker: KafkaBroker,
    producer: Producer,
    raw_producer: FutureProducer,
    /// Headers every produced message carries (`BENCH_HEADERS`), on both sides.
    headers: &'static [(&'static str, &'static str)],
    /// Messages per partition of the last topic the raw side produced.
    partition_sizes: Mutex<Vec<usize>>,
}

impl Bench {
    fn name(&self, what: &str, round: usize) -> String {
        format!("bench-{}-{what}-{round}", self.run)
    }

    /// The `i`th message the framework's side produces.
    fn outgoing(&self, topic: &str, i: usize) -> OutgoingMessage {
        let mut message = OutgoingMessage::new(topic, payload(i, 0)).with_key(key(i));
        message.headers.extend(self.headers.iter().copied());
        message
    }

    /// The same headers for raw rdkafka.
    fn raw_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |all, &(key, value)| {
                all.insert(Header {
                    key,
                    value: Some(value),
                })
            },
        )
    }

    fn raw_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            config.set(k, v);
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
            .config(Config::default().with_concurrency(env_number(
                "BENCH_CONCURRENCY",
                Config::default().concurrency,
            )))
            .without_registered()
            .install_global_producer(false)
            .from_beginning(true)
            .handler(handler)
            .start()
            .await?)
    }

    async fn produce_framework(&self, topic: &str) -> Result<Sample> {
        self.broker.declare_topics(&[topic.to_owned()]).await?;
        let (started, cpu) = (Instant::now(), cpu_time());
        futures::stream::iter(0..self.n)
            .map(|i| self.producer.send_raw(self.outgoing(topic, i)))
            .buffer_unordered(WINDOW)
            .try_for_each(|()| async { Ok(()) })
            .await?;
        Ok(Sample {
            wall: started.elapsed(),
            cpu: cpu_time() - cpu,
        })
    }

    /// `KafkaBroker::publish` alone, without the framework's `Producer`.
    async fn produce_broker(&self, topic: &str) -> Result<Sample> {
        self.broker.declare_topics(&[topic.to_owned()]).await?;
        let (started, cpu) = (Instant::now(), cpu_time());
        futures::stream::iter(0..self.n)
            .map(|i| self.broker.publish(self.outgoing(topic, i)))
            .buffer_unordered(WINDOW)
            .try_for_each(|()| async { Ok(()) })
            .await?;
        Ok(Sample {
            wall: started.elapsed(),
            cpu: cpu_time() - cpu,
        })
    }

    /// Also counts the messages of each partition, into `partition_sizes`.
    async fn produce_raw(&self, topic: &str) -> Result<Sample> {
        self.broker.declare_topics(&[topic.to_owned()]).await?;
        let (started, cpu) = (Instant::now(), cpu_time());
        let sizes = futures::stream::iter(0..self.n)
            .map(|i| async move {
                let (body, key) = (payload(i, 0), key(i));
                let mut record = FutureRecord::to(topic).payload(&body).key(&key);
                if !self.headers.is_empty() {
                    record = record.headers(self.raw_headers());
                }
                self.raw_producer
                    .send(record, Timeout::Never)
                    .await
                    .map(|delivery| delivery.partition)
                    .map_err(|(e, _)| e)
            })
            .buffer_unordered(WINDOW)
            .try_fold(Vec::new(), |mut sizes, partition| async move {
                let partition = partition as usize;
                if sizes.len() <= partition {
                    sizes.resize(partition + 1, 0);
                }
                sizes[partition] += 1;
                Ok(sizes)
            })
            .await?;
        *self.partition_sizes.lock().unwrap() = sizes;
        Ok(Sample {
            wall: started.elapsed(),
            cpu: cpu_time() - cpu,
        })
    }

    async fn consume_framework(&self, topic: &str, group: &str) -> Result<Sample> {
        // Counted per partition, each on a cache line of its own: a partition is handled by
        // one lane at a time, so the count does not bounce between the cores as one shared
        // counter did (about 5 % of the cycles of a consume; the raw loop counts in a local).
        // Its partitions hold as many messages as the raw side's topic: the same keys, the
        // same partition count, librdkafka's default partitioner on both sides.
        let sizes = self.partition_sizes.lock().unwrap().clone();
        let partitions: Arc<Vec<PartitionCount>> = Arc::new(
            sizes
                .into_iter()
                .map(|size| PartitionCount {
                    handled: AtomicUsize::new(0),
                    size,
                })
                .collect(),
        );
        let unfinished = Arc::new(AtomicUsize::new(
            partitions.iter().filter(|p| p.size > 0).count(),
        ));
        if sizes_total(&partitions) != self.n {
            return Err("the raw side's topic was not produced first".into());
        }
        let first = Arc::new(OnceLock::new());
        let last = Arc::new(OnceLock::new());
        let done = Arc::new(Notify::new());
        // Borrowing the invocation, as the attribute macros' handlers do.
        let handler = HandlerSpec::borrowing("count", [topic.to_owned()], {
            let (partitions, unfinished, first, last, done) = (
                partitions.clone(),
                unfinished.clone(),
                first.clone(),
                last.clone(),
                done.clone(),
            );
            move |inv: &Invocation| {
                first.get_or_init(Mark::now);
                let count = match inv.message.position {
                    Position::Partition { partition, .. } => partitions.get(partition as usize),
                    _ => None,
                };
                let Some(count) = count else {
                    return futures::future::ready(Err(HandlerError::permanent(
                        "a record of a partition the raw side did not write to",
                    )));
                };
                if count.handled.fetch_add(1, Ordering::Relaxed) + 1 == count.size
                    && unfinished.fetch_sub(1, Ordering::Relaxed) == 1
                {
                    let _ = last.set(Mark::now());
                    done.notify_one();
                }
                futures::future::ready(Ok(()))
            }
        })
        .group(group);
        let runtime = self.runtime(handler).await?;
        tokio::time::timeout(PATIENCE, done.notified()).await?;
        runtime.shutdown().await?;
        let (first, last): (Mark, Mark) = (
            *first.get().ok_or("no first")?,
            *last.get().ok_or("no last")?,
        );
        Ok(last.since(first))
    }

    /// The broker's consumer alone, without the runtime: `next_batch` and one acknowledgement
    /// each.
    async fn consume_broker(&self, topic: &str, group: &str) -> Result<Sample> {
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
                first.get_or_insert_with(Mark::now);
                // As the runtime acknowledges: a batch at a time.
                acker.ack_batch(&batch).await?;
                seen += batch.len();
            }
            Ok::<_, messaging_core::BrokerError>(Mark::now())
        };
        let last = tokio::time::timeout(PATIENCE, consume).await??;
        consumer.close().await?;
        Ok(last.since(first.ok_or("no first")?))
    }

    /// The raw loop; with `read_headers`, it also asks each record for its headers, as any
    /// consumer that routes or traces by header must (librdkafka parses them on that call).
    async fn consume_raw(&self, topic: &str, group: &str, read_headers: bool) -> Result<Sample> {
        let consumer = self.raw_consumer(group, topic)?;
        let mut first = None;
        let consume = async {
            for _ in 0..self.n {
                let message = consumer.recv().await?;
                first.get_or_insert_with(Mark::now);
                if read_headers {
                    std::hint::black_box(message.headers());
                }
                consumer.store_offset_from_message(&message)?;
            }
            Ok::<_, rdkafka::error::KafkaError>(Mark::now())
        };
        let last = tokio::time::timeout(PATIENCE, consume).await??;
        Ok(last.since(first.ok_or("no first")?))
    }

    /// Raw rdkafka doing by hand what the framework does for a handler: each record copied
    /// out of the client (`detach`), handed to a task of its partition (order per partition,
    /// partitions concurrently), and its offset stored once it was handled.
    async fn consume_by_hand(&self, topic: &str, group: &str) -> Result<Sample> {
        let consumer = Arc::new(self.raw_consumer(group, topic)?);
        let (first, last) = (Arc::new(OnceLock::new()), Arc::new(OnceLock::new()));
        let (handled, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let n = self.n;
        let fetch = tokio::spawn({
            let (consumer, first, last) = (consumer.clone(), first.clone(), last.clone());
            let (handled, done) = (handled.clone(), done.clone());
            async move {
                let mut workers = HashMap::new();
                loop {
                    let record = consumer.recv().await?.detach();
                    first.get_or_init(Mark::now);
                    let worker = workers.entry(record.partition()).or_insert_with(|| {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<OwnedMessage>();
                        let (consumer, last) = (consumer.clone(), last.clone());
                        let (handled, done) = (handled.clone(), done.clone());
                        tokio::spawn(async move {
                            while let Some(record) = rx.recv().await {
                                std::hint::black_box(record.payload());
                                consumer.store_offset(
                                    record.topic(),
                                    record.partition(),
                                    record.offset(),
                                )?;
                                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                                    let _ = last.set(Mark::now());
                                    done.notify_one();
                                }
                            }
                            Ok::<_, rdkafka::error::KafkaError>(())
                        });
                        tx
                    });
                    if worker.send(record).is_err() {
                        return Result::<()>::Err("a partition's worker stopped".into());
                    }
                }
            }
        });
        let finished = tokio::time::timeout(PATIENCE, done.notified()).await;
        fetch.abort();
        finished?;
        let (first, last): (Mark, Mark) = (
            *first.get().ok_or("no first")?,
            *last.get().ok_or("no last")?,
        );
        Ok(last.since(first))
    }

    /// The raw loop reading headers, run on every core: a queue split off per partition
    /// (`split_partition_queue`, before the group assigns them) and a task reading each,
    /// while the main queue only serves the group's events. It bounds what any consumer
    /// that reads headers can reach by converting records in parallel.
    async fn consume_split(&self, topic: &str, group: &str) -> Result<Sample> {
        let consumer = Arc::new(self.raw_consumer(group, topic)?);
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions == 0 {
            return Err(format!("no partitions of {topic} in the cluster's metadata").into());
        }
        let (first, last) = (Arc::new(OnceLock::new()), Arc::new(OnceLock::new()));
        let (handled, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let n = self.n;
        let mut readers =
            tokio::task::JoinSet::<std::result::Result<(), rdkafka::error::KafkaError>>::new();
        for partition in 0..partitions {
            let queue = consumer
                .split_partition_queue(topic, partition)
                .ok_or("no queue for a partition")?;
            let (consumer, first, last) = (consumer.clone(), first.clone(), last.clone());
            let (handled, done) = (handled.clone(), done.clone());
            readers.spawn(async move {
                loop {
                    let message = queue.recv().await?;
                    first.get_or_init(Mark::now);
                    std::hint::black_box(message.headers());
                    consumer.store_offset_from_message(&message)?;
                    if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        let _ = last.set(Mark::now());
                        done.notify_one();
                    }
                }
            });
        }
        // Serves the group's events; a record here would mean a partition was not split.
        readers.spawn({
            let consumer = consumer.clone();
            async move {
                let record = consumer.recv().await?;
                Err(rdkafka::error::KafkaError::Subscription(format!(
                    "partition {} was not split off",
                    record.partition()
                )))
            }
        });
        let outcome: Result<()> = tokio::select! {
            () = done.notified() => Ok(()),
            Some(Ok(Err(error))) = readers.join_next() => Err(error.into()),
            () = tokio::time::sleep(PATIENCE) => Err("timed out".into()),
        };
        readers.abort_all();
        outcome?;
        let (first, last): (Mark, Mark) = (
            *first.get().ok_or("no first")?,
            *last.get().ok_or("no last")?,
        );
        Ok(last.since(first))
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
    let rounds = env_number("BENCH_ROUNDS", 9).max(1);
    let mut properties: Vec<(String, String)> = COMMON
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for pair in std::env::var("BENCH_KAFKA_PROPERTIES")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .ok_or("BENCH_KAFKA_PROPERTIES: write name=value,…")?;
        properties.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let framework_properties = properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("messaging.topic.replication.factor", "1")]);
    let broker = KafkaBroker::connect_with_properties(&bootstrap, framework_properties)
        .await
        .map_err(|e| {
            format!("Kafka is not reachable at {bootstrap} (run scripts/start-kafka.sh): {e}")
        })?;
    let mut raw_config = ClientConfig::new();
    raw_config
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    for (k, v) in &properties {
        raw_config.set(k, v);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let mut bench = Bench {
        bootstrap,
        properties: properties.clone(),
        run: format!("{:x}", nanos & 0xffff_ffff_ffff),
        n,
        producer: Producer::new(broker.clone().into_dyn(), Config::default()),
        broker,
        raw_producer: raw_config.create()?,
        headers: &HEADERS[..env_number("BENCH_HEADERS", 0).min(HEADERS.len())],
        partition_sizes: Mutex::default(),
    };
    println!(
        "Kafka throughput: {n} messages of {PAYLOAD} bytes, {rounds} round(s), window {WINDOW}, properties {properties:?}"
    );
    // Warm-up: connections, producer ids and the broker's first topics.
    bench.n = 2_000;
    bench.produce_raw(&bench.name("warm-raw", 0)).await?;
    bench.produce_framework(&bench.name("warm-fw", 0)).await?;
    bench.n = n;

    let mut produce_broker_only = Series::default();
    let (mut produce, mut consume, mut broker_only) = (
        [Series::default(), Series::default()],
        [Series::default(), Series::default()],
        Series::default(),
    );
    let (mut by_hand, mut raw_headers, mut raw_split) =
        (Series::default(), Series::default(), Series::default());
    let mut latency = [(Duration::MAX, Duration::MAX); 2];
    let phases =
        std::env::var("BENCH_PHASES").unwrap_or_else(|_| "produce,consume,latency,idle".to_owned());
    let (with_consume, with_latency) = (phases.contains("consume"), phases.contains("latency"));
    let with_idle = phases.contains("idle");
    // `BENCH_CONSUMERS=raw,framework,broker,hand,headers,split` (the default: all) picks the
    // consuming sides, to profile one alone.
    const CONSUMERS: [&str; 6] = ["raw", "framework", "broker", "hand", "headers", "split"];
    let consumers = std::env::var("BENCH_CONSUMERS").unwrap_or_else(|_| CONSUMERS.join(","));
    let consumes = |side: usize| {
        consumers
            .split(',')
            .any(|name| name.trim() == CONSUMERS[side])
    };
    let (machine_before, process_before, broker_before) =
        (MachineTicks::now(), cpu_time(), broker_ticks());
    for round in 0..rounds {
        let topics = [
            bench.name("raw", round),
            bench.name("fw", round),
            bench.name("broker", round),
        ];
        // The three sides take turns at going first.
        let mut p = [Sample::NONE; 3];
        for side in (0..3).map(|k| (k + round) % 3) {
            p[side] = match side {
                0 => bench.produce_raw(&topics[0]).await?,
                1 => bench.produce_framework(&topics[1]).await?,
                _ => bench.produce_broker(&topics[2]).await?,
            };
        }
        println!(
            "round {round}: produce raw {:?} framework {:?} broker layer {:?}",
            p[0], p[1], p[2]
        );
        produce[0].push(p[0]);
        produce[1].push(p[1]);
        produce_broker_only.push(p[2]);
        if with_consume {
            let mut c = [Sample::NONE; CONSUMERS.len()];
            for side in (0..CONSUMERS.len())
                .map(|k| (k + round) % CONSUMERS.len())
                .filter(|&side| consumes(side))
            {
                let group = bench.name(&format!("group-{side}"), round);
                // "hand", "headers" and "split" read raw's topic again, each in a group of its own.
                c[side] = match side {
                    0 => bench.consume_raw(&topics[0], &group, false).await?,
                    1 => bench.consume_framework(&topics[1], &group).await?,
                    2 => bench.consume_broker(&topics[2], &group).await?,
                    3 => bench.consume_by_hand(&topics[0], &group).await?,
                    4 => bench.consume_raw(&topics[0], &group, true).await?,
                    _ => bench.consume_split(&topics[0], &group).await?,
                };
            }
            println!(
                "round {round}: consume raw {:?} framework {:?} broker layer {:?} by hand {:?} raw reading headers {:?} split {:?}",
                c[0], c[1], c[2], c[3], c[4], c[5]
            );
            consume[0].push(c[0]);
            consume[1].push(c[1]);
            broker_only.push(c[2]);
            by_hand.push(c[3]);
            raw_headers.push(c[4]);
            raw_split.push(c[5]);
        }
        if with_latency {
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
            println!("round {round}: latency p50/p99 raw {raw_l:?} framework {fw_l:?}");
            for (best, new) in latency.iter_mut().zip([raw_l, fw_l]) {
                if new.0 < best.0 {
                    *best = new;
                }
            }
        }
    }
    let (machine_after, process_after, broker_after) =
        (MachineTicks::now(), cpu_time(), broker_ticks());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let us_per_message = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let wall_rate = |s: Sample| rate(n, s.wall);
    println!();
    println!("| measure ({rounds} rounds) | raw rdkafka | framework | framework / raw |");
    println!("|---|---|---|---|");
    for (what, [raw, fw]) in [("produce", &produce), ("consume", &consume)] {
        if !(raw.measured() && fw.measured()) {
            continue;
        }
        for (which, raw, fw) in [
            ("best round", raw.best(), fw.best()),
            ("median round", raw.median(), fw.median()),
        ] {
            println!(
                "| {what}, messages/s, {which} | {:.0} | {:.0} | {:.2} |",
                wall_rate(raw),
                wall_rate(fw),
                wall_rate(fw) / wall_rate(raw)
            );
        }
        let ratios = fw.ratios_to(raw);
        println!(
            "| {what}, framework / raw within each round: median (least–most) | | | **{:.2}** ({:.2}–{:.2}) |",
            median(ratios.iter().copied()),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max)
        );
        let (raw, fw) = (raw.median(), fw.median());
        println!(
            "| {what}, client CPU µs/message, median round | {:.2} | {:.2} | {:.2} (raw CPU / framework CPU) |",
            us_per_message(raw.cpu),
            us_per_message(fw.cpu),
            raw.cpu.as_secs_f64() / fw.cpu.as_secs_f64()
        );
    }
    // The other sides against their base, each by its median round.
    let (produce_raw, consume_raw, consume_fw) = (
        produce[0].median(),
        consume[0].median(),
        consume[1].median(),
    );
    if produce_broker_only.measured() && produce[0].measured() {
        let side = produce_broker_only.median();
        println!(
            "| produce through `KafkaBroker` alone (no `Producer`), median round: messages/s; CPU µs/message | | {:.0}; {:.2} | {:.2}; {:.2} |",
            wall_rate(side),
            us_per_message(side.cpu),
            wall_rate(side) / wall_rate(produce_raw),
            produce_raw.cpu.as_secs_f64() / side.cpu.as_secs_f64()
        );
    }
    if broker_only.measured() && consume[0].measured() {
        let side = broker_only.median();
        println!(
            "| consume through `KafkaBroker` alone (no runtime), median round: messages/s; CPU µs/message | | {:.0}; {:.2} | {:.2}; {:.2} |",
            wall_rate(side),
            us_per_message(side.cpu),
            wall_rate(side) / wall_rate(consume_raw),
            consume_raw.cpu.as_secs_f64() / side.cpu.as_secs_f64()
        );
    }
    let raw_sides = [
        (
            "consume by hand on raw rdkafka (records copied out, a task per partition, offset stored after handling)",
            "by hand",
            &by_hand,
        ),
        (
            "consume on raw rdkafka also reading each record's headers",
            "raw reading headers",
            &raw_headers,
        ),
        (
            "the same, a task per partition queue (split off before assignment)",
            "raw reading headers split",
            &raw_split,
        ),
    ];
    for (what, short, side) in raw_sides {
        if side.measured() && consume[1].measured() {
            let side = side.median();
            println!(
                "| {what}, median round: messages/s; CPU µs/message | {:.0}; {:.2} | | framework / {short}: {:.2}; CPU {:.2} |",
                wall_rate(side),
                us_per_message(side.cpu),
                wall_rate(consume_fw) / wall_rate(side),
                side.cpu.as_secs_f64() / consume_fw.cpu.as_secs_f64()
            );
        }
    }
    if raw_split.measured() && consume[0].measured() {
        let side = raw_split.median();
        println!(
            "| raw reading headers split / raw, median rounds | | | {:.2}; CPU {:.2} |",
            wall_rate(side) / wall_rate(consume_raw),
            consume_raw.cpu.as_secs_f64() / side.cpu.as_secs_f64()
        );
    }
    if with_latency {
        println!(
            "| publish→handler latency p50 / p99, ms (the round of least p50) | {:.1} / {:.1} | {:.1} / {:.1} | |",
            ms(latency[0].0),
            ms(latency[0].1),
            ms(latency[1].0),
            ms(latency[1].1)
        );
    }
    let ticks = machine_after
        .total
        .saturating_sub(machine_before.total)
        .max(1) as f64;
    let share = |part: f64| 100.0 * part / ticks;
    let process_ticks = (process_after - process_before).as_secs_f64() * 100.0;
    let busy = machine_after.busy.saturating_sub(machine_before.busy) as f64;
    let broker = broker_after.saturating_sub(broker_before) as f64;
    println!(
        "| the machine over the rounds, % of all cores' time: busy (this process, the broker `tansu`, the rest); stolen by the hypervisor | {:.0} % ({:.0} %, {:.0} %, {:.0} %); {:.1} % | | |",
        share(busy),
        share(process_ticks),
        share(broker),
        share((busy - process_ticks - broker).max(0.0)),
        share(machine_after.steal.saturating_sub(machine_before.steal) as f64)
    );
    if with_idle {
        // Nothing is produced meanwhile: what the polling threads use is their idle cost.
        let before = [RAW_POLLING_THREAD, FRAMEWORK_POLLING_THREAD].map(threads_cpu_time);
        tokio::time::sleep(IDLE).await;
        let after = [RAW_POLLING_THREAD, FRAMEWORK_POLLING_THREAD].map(threads_cpu_time);
        let [raw, fw] = [0, 1].map(|side| after[side].saturating_sub(before[side]));
        println!(
            "| idle producer's polling thread, CPU ms over {} s | {:.2} | {:.2} | |",
            IDLE.as_secs(),
            ms(raw),
            ms(fw)
        );
    }
    Ok(())
}
