//! Reliability under crashes, broker restarts and horizontal scale (issue 7, DESIGN §4: "a
//! crash at any point loses nothing; it may redeliver"), shared by the broker test files
//! `tests/tests/reliability_*.rs`.
//!
//! Every test runs the real consumer command line as separate processes (the binary
//! `reliability_consumer`, whose handler appends each handled message's id to a file before it
//! returns `Ok`), publishes ids `0..n` with our producer, does something bad to the processes
//! or the broker, and then asserts on the files: every id was handled at least once (lost = 0).
//! Duplicates are allowed (at-least-once) and counted.
//!
//! - [`crash`]: `n` messages, one consumer SIGKILLed three times at seeded random points of
//!   its progress and started again each time.
//! - [`broker_restart`]: half the messages, one consumer, the broker restarted (by the
//!   caller's function) a quarter of the way through; then the other half is published; the
//!   consumer never exits and finishes everything.
//! - [`scale`]: three consumers of one group share `n` messages; one is SIGKILLed mid-run
//!   and the two others finish its work.
//!
//! `n` is 10 000; with `MESSAGING_LONG_TESTS=1` it is 100 000 (crash, restart) and 30 000
//! (scale). Every handler takes 1 ms, 8 at once per process. The random points come from `RELIABILITY_SEED` when set, else from the
//! clock; the seed is printed. Each test prints a one-line [`Report`] and appends it to the
//! file named by `RELIABILITY_REPORT` when set (the figures in `RELIABILITY.md` come from there).
//! Each run's files (handled ids per process, consumer output) are in a directory under the
//! system's temporary directory, removed when the test passes unless `RELIABILITY_KEEP=1`.

use std::fmt;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use messaging_core::{Broker, OutgoingMessage, StartFrom, Subscription};

/// How long a run may go without one new id handled before it is declared stuck. Generous:
/// after a Kafka broker restart the consumer has been seen to wait over 80 s before it
/// fetched again (RELIABILITY.md, "Findings").
const STALL: Duration = Duration::from_secs(180);

/// How long a consumer gets to exit after SIGTERM.
const EXIT: Duration = Duration::from_secs(40);

/// Messages published at once.
const PUBLISH_IN_FLIGHT: usize = 256;

/// Distinct message keys (ids modulo this): the runtime runs keys concurrently, so messages
/// are in flight at once when a process is killed; on Kafka they spread over the partitions.
const KEYS: u64 = 64;

/// `short`, or `long` when `MESSAGING_LONG_TESTS=1`.
pub fn message_count(short: u64, long: u64) -> u64 {
    if std::env::var("MESSAGING_LONG_TESTS").is_ok_and(|v| v == "1") {
        long
    } else {
        short
    }
}

/// What a broker needs before the consumer can see messages published before it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepare {
    /// Nothing: the consumer's group starts from the beginning (`--from-beginning`).
    Nothing,
    /// Subscribe the group once and close (RabbitMQ: a group's queue exists from its first
    /// subscription on; messages published to a topic no queue is bound to are dropped).
    Subscribe,
    /// Create the topic first, with the publishing client's partition count (Kafka).
    DeclareTopic,
}

/// A broker as the reliability tests use it.
pub struct Backend {
    /// Its name in the reports (`redis`, `rabbitmq`, `kafka`).
    pub name: &'static str,
    /// The consumer binary (`env!("CARGO_BIN_EXE_reliability_consumer")`).
    pub binary: &'static str,
    /// The environment that points the consumer binary at the broker (`MESSAGING_BACKEND`, the
    /// URL, client settings).
    pub env: Vec<(String, String)>,
    /// A client connection that publishes the test's messages.
    pub publisher: Arc<dyn Broker>,
    /// What is done before publishing.
    pub prepare: Prepare,
    /// Removes what a run left on the broker (streams, queues); given the topic and group.
    /// Run when the run ends, failed or not.
    pub cleanup: fn(&str, &str),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("env", &self.env)
            .field("prepare", &self.prepare)
            .finish_non_exhaustive()
    }
}

/// What one test found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The broker.
    pub broker: &'static str,
    /// `crash`, `restart` or `scale`.
    pub test: &'static str,
    /// Messages published (ids `0..messages`).
    pub messages: u64,
    /// Consumer processes SIGKILLed.
    pub kills: u32,
    /// Broker restarts.
    pub restarts: u32,
    /// Ids never handled. Every test asserts 0.
    pub lost: u64,
    /// Handled lines beyond one per id.
    pub duplicates: u64,
    /// Lines handled by each consumer process, in start order.
    pub per_process: Vec<u64>,
    /// From the first consumer start to the last id handled.
    pub elapsed: Duration,
    /// What drew the random points.
    pub seed: u64,
    /// Anything else worth writing down (when the kills came, how long the broker was down).
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reliability broker={} test={} messages={} kills={} restarts={} lost={} duplicates={} \
             per_process={:?} elapsed={:.1}s seed={}",
            self.broker,
            self.test,
            self.messages,
            self.kills,
            self.restarts,
            self.lost,
            self.duplicates,
            self.per_process,
            self.elapsed.as_secs_f64(),
            self.seed,
        )?;
        for note in &self.notes {
            write!(f, " | {note}")?;
        }
        Ok(())
    }
}

impl Report {
    fn publish(&self) {
        println!("{self}");
        if let Ok(path) = std::env::var("RELIABILITY_REPORT") {
            let mut file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("cannot open RELIABILITY_REPORT {path}: {e}"));
            writeln!(file, "{self}").unwrap();
        }
    }
}

/// A small seeded generator (splitmix64): enough to pick kill points, and reproducible.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// From `RELIABILITY_SEED`, else from the clock; prints the seed.
    pub fn from_env(test: &str) -> (Self, u64) {
        let seed = std::env::var("RELIABILITY_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{test}: seed {seed} (run again with RELIABILITY_SEED={seed})");
        (Self(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (not empty).
    pub fn in_range(&mut self, range: Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

/// A consumer process; SIGKILLed if still running when dropped.
pub struct Process {
    child: Option<Child>,
    /// Its index in the [`Tally`].
    pub index: usize,
    out: PathBuf,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("index", &self.index)
            .finish()
    }
}

impl Process {
    /// Panics, showing its output, when it exited.
    pub fn assert_running(&mut self, what: &str) {
        let child = self.child.as_mut().expect("the process was started");
        if let Some(status) = child.try_wait().unwrap() {
            self.child = None;
            panic!(
                "consumer {} exited by itself ({status}) {what}; its output ends with:\n{}",
                self.index,
                self.output_tail()
            );
        }
    }

    /// SIGKILL: no shutdown, nothing acknowledged or committed on the way out.
    pub fn kill(&mut self) {
        self.assert_running("before it was killed");
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.assert_running("before SIGTERM");
        let child = self.child.as_mut().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + EXIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "consumer {} did not exit within {EXIT:?} of SIGTERM; output:\n{}",
                self.index,
                self.output_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of what it wrote to stdout and stderr.
    pub fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn output_contains(&self, what: &str) -> bool {
        std::fs::read_to_string(&self.out).is_ok_and(|text| text.contains(what))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One handled-ids file, read as it grows.
#[derive(Debug)]
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    lines: u64,
}

/// How often each id was handled, read from the consumers' files.
#[derive(Debug)]
pub struct Tally {
    counts: Vec<u32>,
    distinct: u64,
    unexpected: Vec<String>,
    tails: Vec<Tail>,
}

impl Tally {
    fn new(messages: u64) -> Self {
        Self {
            counts: vec![0; usize::try_from(messages).unwrap()],
            distinct: 0,
            unexpected: Vec::new(),
            tails: Vec::new(),
        }
    }

    fn watch(&mut self, path: PathBuf) -> usize {
        self.tails.push(Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            lines: 0,
        });
        self.tails.len() - 1
    }

    /// Reads what the files gained since the last call.
    pub fn update(&mut self) {
        for tail in &mut self.tails {
            let Ok(mut file) = File::open(&tail.path) else {
                continue;
            };
            file.seek(SeekFrom::Start(tail.offset)).unwrap();
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).unwrap();
            tail.offset += buf.len() as u64;
            tail.partial.extend_from_slice(&buf);
            let Some(end) = tail.partial.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            let complete: Vec<u8> = tail.partial.drain(..=end).collect();
            for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                tail.lines += 1;
                let text = String::from_utf8_lossy(line);
                match text
                    .parse::<usize>()
                    .ok()
                    .filter(|&id| id < self.counts.len())
                {
                    Some(id) => {
                        if self.counts[id] == 0 {
                            self.distinct += 1;
                        }
                        self.counts[id] += 1;
                    }
                    None => self.unexpected.push(text.into_owned()),
                }
            }
        }
    }

    /// Ids handled at least once.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Whether any id of `ids` was handled.
    pub fn any_handled(&self, ids: Range<u64>) -> bool {
        self.counts[ids.start as usize..ids.end as usize]
            .iter()
            .any(|&c| c > 0)
    }

    /// Lines recorded by the process with this index.
    pub fn lines(&self, index: usize) -> u64 {
        self.tails[index].lines
    }

    fn per_process(&self) -> Vec<u64> {
        self.tails.iter().map(|t| t.lines).collect()
    }

    fn lost(&self) -> Vec<u64> {
        (0..self.counts.len() as u64)
            .filter(|&id| self.counts[id as usize] == 0)
            .collect()
    }

    fn duplicates(&self) -> u64 {
        self.counts
            .iter()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum()
    }
}

/// Publishes ids `range` (body: the id in decimal; key: the id modulo 64). With
/// `retry`, a failed publish is tried again (up to 60 times, 500 ms apart) and the failures
/// are counted; without, a failure panics. Returns (time taken, failed attempts).
pub async fn publish(
    broker: Arc<dyn Broker>,
    topic: &str,
    range: Range<u64>,
    retry: bool,
) -> (Duration, u64) {
    let started = Instant::now();
    let failures: Vec<u64> = futures::stream::iter(range)
        .map(|id| {
            let broker = Arc::clone(&broker);
            async move {
                let mut failures = 0;
                loop {
                    let message = OutgoingMessage::new(topic, id.to_string().into_bytes())
                        .with_key((id % KEYS).to_string());
                    match broker.publish(message).await {
                        Ok(()) => return failures,
                        Err(error) if retry && failures < 60 => {
                            if failures == 0 {
                                println!("publishing {id} failed, retrying: {error}");
                            }
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(error) => panic!("publishing {id} to {topic} failed: {error}"),
                    }
                }
            }
        })
        .buffer_unordered(PUBLISH_IN_FLIGHT)
        .collect()
        .await;
    (started.elapsed(), failures.into_iter().sum())
}

/// One test's names, files and processes.
pub struct Run<'a> {
    backend: &'a Backend,
    test: &'static str,
    /// The topic every message goes to.
    pub topic: String,
    /// The consumers' group.
    pub group: String,
    dir: PathBuf,
    /// The ids handled so far.
    pub tally: Tally,
    messages: u64,
}

impl fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("test", &self.test)
            .field("topic", &self.topic)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        (self.backend.cleanup)(&self.topic, &self.group);
        // A failed run keeps its files (handled ids, consumer output) for a look, and so
        // does every run with `RELIABILITY_KEEP=1`.
        if !std::thread::panicking() && std::env::var_os("RELIABILITY_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl<'a> Run<'a> {
    /// Fresh names for one test of `messages` messages.
    pub fn new(backend: &'a Backend, test: &'static str, messages: u64) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let tag = format!("rel-{test}-{}", &id[id.len() - 10..]);
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).unwrap();
        println!(
            "{} {test}: topic {tag}.ids, group {tag}, files in {}",
            backend.name,
            dir.display()
        );
        Self {
            backend,
            test,
            topic: format!("{tag}.ids"),
            group: tag,
            dir,
            tally: Tally::new(messages),
            messages,
        }
    }

    /// Makes the broker ready for messages published before the consumers start.
    pub async fn prepare(&self) {
        let broker = &self.backend.publisher;
        match self.backend.prepare {
            Prepare::Nothing => {}
            Prepare::Subscribe => {
                let consumer = broker
                    .subscribe(Subscription {
                        group: self.group.clone(),
                        topics: vec![self.topic.clone()],
                        start: StartFrom::Earliest,
                        prefetch: 1,
                    })
                    .await
                    .expect("the group's subscription is declared");
                consumer.close().await.expect("the subscription closes");
            }
            Prepare::DeclareTopic => broker
                .declare_topics(std::slice::from_ref(&self.topic))
                .await
                .expect("the topic is created"),
        }
    }

    /// Publishes ids `range`, panicking on a failure.
    pub async fn publish(&self, range: Range<u64>) -> Duration {
        let count = range.end - range.start;
        let (took, _) = publish(
            Arc::clone(&self.backend.publisher),
            &self.topic,
            range,
            false,
        )
        .await;
        println!(
            "{} {}: published {count} messages in {:.1}s",
            self.backend.name,
            self.test,
            took.as_secs_f64()
        );
        took
    }

    /// Starts a consumer process of the group, recording into a file of its own. `slow`:
    /// how long each message takes; `concurrency`: `--concurrency`.
    pub fn spawn(&mut self, slow: Option<Duration>, concurrency: u16) -> Process {
        let n = self.tally.tails.len();
        let log = self.dir.join(format!("handled-{n}.log"));
        let out_path = self.dir.join(format!("consumer-{n}.out"));
        let out = File::create(&out_path).unwrap();
        let mut command = Command::new(self.backend.binary);
        command
            .args([
                "--group",
                &self.group,
                "--from-beginning",
                "--concurrency",
                &concurrency.to_string(),
                "--shutdown-timeout",
                "20s",
            ])
            .env("RELIABILITY_TOPIC", &self.topic)
            .env("RELIABILITY_LOG", &log)
            .env("MESSAGING_SOURCE", format!("reliability-{n}"))
            .env("MESSAGING_CONNECT_RETRY_DELAY", "200ms")
            .env("MESSAGING_CONNECT_COOLDOWN", "1s")
            .env("RUST_LOG", "info")
            .envs(self.backend.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(slow) = slow {
            command.env("RELIABILITY_SLOW_MS", slow.as_millis().to_string());
        }
        let child = command.spawn().expect("the reliability consumer starts");
        let index = self.tally.watch(log);
        assert_eq!(index, n);
        Process {
            child: Some(child),
            index,
            out: out_path,
        }
    }

    /// Polls the files until `done`, checking that every process in `running` is alive; panics
    /// when no new id was handled for 180 s.
    pub async fn until(
        &mut self,
        running: &mut [&mut Process],
        mut done: impl FnMut(&Tally) -> bool,
    ) {
        let mut last = (self.tally.distinct(), Instant::now());
        loop {
            self.tally.update();
            if done(&self.tally) {
                return;
            }
            for process in running.iter_mut() {
                process.assert_running("while messages were left");
            }
            if self.tally.distinct() != last.0 {
                last = (self.tally.distinct(), Instant::now());
            }
            if last.1.elapsed() > STALL {
                let outputs: Vec<String> = running
                    .iter()
                    .map(|p| format!("consumer {}:\n{}", p.index, p.output_tail()))
                    .collect();
                panic!(
                    "{} {}: stuck at {} of {} ids handled for {STALL:?}\n{}",
                    self.backend.name,
                    self.test,
                    self.tally.distinct(),
                    self.messages,
                    outputs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every process in `running` logged that it consumes.
    pub async fn until_consuming(&mut self, running: &mut [&mut Process]) {
        let deadline = Instant::now() + STALL;
        while !running.iter().all(|p| p.output_contains("consuming")) {
            for process in running.iter_mut() {
                process.assert_running("while starting");
            }
            assert!(Instant::now() < deadline, "the consumers did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERMs the processes, checks they exit 0, and reads the files a last time.
    pub fn finish(&mut self, running: &mut [&mut Process]) {
        for process in running.iter_mut() {
            let status = process.terminate();
            assert!(
                status.success(),
                "consumer {} exited with {status} after SIGTERM:\n{}",
                process.index,
                process.output_tail()
            );
        }
        self.tally.update();
    }

    /// Asserts nothing was lost and builds the report.
    pub fn report(
        &self,
        kills: u32,
        restarts: u32,
        elapsed: Duration,
        seed: u64,
        notes: Vec<String>,
    ) -> Report {
        let lost = self.tally.lost();
        let report = Report {
            broker: self.backend.name,
            test: self.test,
            messages: self.messages,
            kills,
            restarts,
            lost: lost.len() as u64,
            duplicates: self.tally.duplicates(),
            per_process: self.tally.per_process(),
            elapsed,
            seed,
            notes,
        };
        report.publish();
        assert!(
            lost.is_empty(),
            "{} ids lost, the first: {:?} ({report})",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        assert!(
            self.tally.unexpected.is_empty(),
            "lines that are no published id: {:?}",
            &self.tally.unexpected[..self.tally.unexpected.len().min(20)]
        );
        report
    }

    /// The directory of its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A [`Backend::cleanup`] for RabbitMQ on the default exchange `messaging`: deletes the
/// group's queue and the kept dead-letter queue with `rabbitmqctl`.
pub fn delete_rabbit_queues(topic: &str, group: &str) {
    for queue in [
        format!("messaging.group.{group}"),
        format!("messaging.topic.{topic}.dlq"),
    ] {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &queue])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Handlers running at once in each consumer process.
const CONCURRENCY: u16 = 8;

/// How long each message takes in the handler: enough that a kill lands while messages are
/// being handled, not only between fetches, and (on Kafka) that a consumer lives through
/// offset commits before it is killed.
const SLOW: Option<Duration> = Some(Duration::from_millis(1));

/// Publishes `n` messages (10 000; 100 000 long), then runs one consumer and SIGKILLs it at
/// three seeded random points of its progress (one in each third of the run), starting it again each time; the last one runs
/// until every id was handled and exits 0 on SIGTERM. Asserts nothing was lost.
pub async fn crash(backend: &Backend) -> Report {
    let messages = message_count(10_000, 100_000);
    let mut run = Run::new(backend, "crash", messages);
    let (mut rng, seed) = Rng::from_env(&format!("{} crash", backend.name));
    run.prepare().await;
    run.publish(0..messages).await;
    // One point in each third of 10 %..90 % of the ids, so the kills spread over the run.
    let third = messages * 8 / 30;
    let points: Vec<u64> = (0..3)
        .map(|k| {
            let from = messages / 10 + k * third;
            rng.in_range(from..from + third)
        })
        .collect();

    let started = Instant::now();
    let mut notes = Vec::new();
    let mut current = run.spawn(SLOW, CONCURRENCY);
    for (kill, point) in points.iter().enumerate() {
        let index = current.index;
        // A point the previous process already passed is taken once this one handled some.
        run.until(&mut [&mut current], |t| {
            t.distinct() >= *point && t.lines(index) > 0
        })
        .await;
        current.kill();
        notes.push(format!(
            "kill {} at {}/{messages} ids after {:.1}s",
            kill + 1,
            run.tally.distinct(),
            started.elapsed().as_secs_f64()
        ));
        println!("{} crash: {}", backend.name, notes.last().unwrap());
        current = run.spawn(SLOW, CONCURRENCY);
    }
    run.until(&mut [&mut current], |t| t.distinct() == messages)
        .await;
    let elapsed = started.elapsed();
    run.finish(&mut [&mut current]);
    run.report(3, 0, elapsed, seed, notes)
}

/// Publishes half of `n` messages (10 000; 100 000 long), runs one consumer, calls `restart`
/// (which stops the broker and starts it again, returning how long it was away) once a
/// quarter of them was handled, publishes the other half, and waits until every id was
/// handled. The consumer must never exit on its own; it exits 0 on SIGTERM at the end.
pub async fn broker_restart<F, Fut>(backend: &Backend, restart: F) -> Report
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let messages = message_count(10_000, 100_000);
    let half = messages / 2;
    let mut run = Run::new(backend, "restart", messages);
    run.prepare().await;
    run.publish(0..half).await;
    let started = Instant::now();
    let mut consumer = run.spawn(SLOW, CONCURRENCY);
    run.until(&mut [&mut consumer], |t| t.distinct() >= messages / 4)
        .await;
    let before = run.tally.distinct();
    let away = restart().await;
    consumer.assert_running("during the broker restart");
    run.tally.update();
    let mut notes = vec![format!(
        "broker restarted at {before}/{messages} ids, away {:.1}s",
        away.as_secs_f64()
    )];
    let back = Instant::now();
    let publisher = Arc::clone(&backend.publisher);
    let topic = run.topic.clone();
    let publishing =
        tokio::spawn(async move { publish(publisher, &topic, half..messages, true).await });
    // Fetching again, not just finishing what was fetched before the restart: the first of
    // the messages published since.
    run.until(&mut [&mut consumer], |t| t.any_handled(half..messages))
        .await;
    notes.push(format!(
        "the first message published after the restart handled {:.1}s after the broker was back",
        back.elapsed().as_secs_f64()
    ));
    run.until(&mut [&mut consumer], |t| t.distinct() == messages)
        .await;
    let elapsed = started.elapsed();
    let (took, failures) = publishing.await.expect("publishing finished");
    notes.push(format!(
        "second half published in {:.1}s with {failures} failed attempts",
        took.as_secs_f64()
    ));
    run.finish(&mut [&mut consumer]);
    run.report(0, 1, elapsed, 0, notes)
}

/// Starts three consumers of one group, publishes `n` messages (10 000; 30 000 long) while
/// they run, SIGKILLs a seeded random one of them once a seeded random share (a quarter to a
/// half) was handled, and waits until the other two handled everything.
pub async fn scale(backend: &Backend) -> Report {
    let messages = message_count(10_000, 30_000);
    let mut run = Run::new(backend, "scale", messages);
    let (mut rng, seed) = Rng::from_env(&format!("{} scale", backend.name));
    run.prepare().await;
    let mut a = run.spawn(SLOW, CONCURRENCY);
    let mut b = run.spawn(SLOW, CONCURRENCY);
    let mut c = run.spawn(SLOW, CONCURRENCY);
    run.until_consuming(&mut [&mut a, &mut b, &mut c]).await;
    let started = Instant::now();
    let publisher = Arc::clone(&backend.publisher);
    let topic = run.topic.clone();
    let publishing =
        tokio::spawn(async move { publish(publisher, &topic, 0..messages, false).await });

    let victim = rng.in_range(0..3) as usize;
    let point = rng.in_range(messages / 4..messages / 2);
    run.until(&mut [&mut a, &mut b, &mut c], |t| {
        t.distinct() >= point && t.lines(victim) > 0
    })
    .await;
    let at_kill = run.tally.per_process();
    let mut notes = vec![format!(
        "consumer {victim} killed at {}/{messages} ids after {:.1}s, split then {at_kill:?}",
        run.tally.distinct(),
        started.elapsed().as_secs_f64()
    )];
    let (mut survivors, killed): (Vec<&mut Process>, Vec<&mut Process>) = [&mut a, &mut b, &mut c]
        .into_iter()
        .partition(|p| p.index != victim);
    for process in killed {
        process.kill();
    }
    run.until(&mut survivors, |t| t.distinct() == messages)
        .await;
    let elapsed = started.elapsed();
    let (took, _) = publishing.await.expect("publishing finished");
    notes.push(format!("published in {:.1}s", took.as_secs_f64()));
    run.finish(&mut survivors);
    let after_kill: u64 = survivors
        .iter()
        .map(|p| run.tally.lines(p.index) - at_kill[p.index])
        .sum();
    notes.push(format!("the survivors handled {after_kill} after the kill"));
    let report = run.report(1, 0, elapsed, seed, notes);
    assert!(
        report.per_process.iter().all(|&n| n > 0),
        "a consumer of the group got nothing: {report}"
    );
    assert!(
        after_kill > 0,
        "nothing was handled after the kill: {report}"
    );
    report
}
