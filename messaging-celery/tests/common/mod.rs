//! What the Redis and AMQP tests share: a real Celery worker (`tests/celery/worker_tasks.py`,
//! from the venv `scripts/install-celery.sh` makes) started as a child process, Python that
//! sends tasks, the framework's handlers, and the scenarios both transports run.
//!
//! They need Redis on 127.0.0.1:6379 (database 5 is theirs) and RabbitMQ on 127.0.0.1:5672
//! (guest/guest, queues of their own named `celery-test.*`), and fail, never skip, without
//! them or without Celery.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use messaging_celery::{CeleryBroker, CeleryOptions, TASKS_VARIABLE, URL_VARIABLE};
use messaging_core::prelude::*;
use messaging_core::{
    Broker, Consumer, DeadLetterRecord, Message, Runtime, StartFrom, Subscription,
    configure_messaging, get_producer,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/5";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672//";

/// A name no other run or test uses.
pub fn unique(prefix: &str) -> String {
    format!("celery-test.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// The venv with Celery; the tests fail without it.
fn venv() -> PathBuf {
    let venv = std::env::var_os("CELERY_VENV").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/messaging/celery-venv")
        },
        PathBuf::from,
    );
    assert!(
        venv.join("bin/celery").exists(),
        "Celery is not installed in {}: run scripts/install-celery.sh",
        venv.display()
    );
    venv
}

/// Where `worker_tasks.py` is.
fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/celery")
}

/// Waits until `done` holds, failing with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `python worker_tasks.py <args>` against `url` and waits for it to succeed.
pub async fn python(url: &str, args: &[&str]) {
    let output = tokio::process::Command::new(venv().join("bin/python"))
        .arg("worker_tasks.py")
        .args(args)
        .current_dir(tasks_dir())
        .env("CELERY_BROKER_URL", url)
        .env("CELERY_RECORD_FILE", "/dev/null")
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "python worker_tasks.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Celery worker consuming some queues, killed when dropped.
pub struct Worker {
    child: Child,
    dir: PathBuf,
}

impl Worker {
    /// Starts `celery -A worker_tasks worker --pool solo -Q <queues>` and waits until it
    /// consumes.
    pub async fn start(url: &str, queues: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("worker"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("worker.log")).unwrap();
        let child = Command::new(venv().join("bin/celery"))
            .args([
                "-A",
                "worker_tasks",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
            ])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .arg("-Q")
            .arg(queues.join(","))
            .arg("-n")
            .arg(format!("{}@localhost", uuid::Uuid::now_v7().simple()))
            .current_dir(tasks_dir())
            .env("CELERY_BROKER_URL", url)
            .env("CELERY_RECORD_FILE", dir.join("calls.jsonl"))
            .env("CELERY_READY_FILE", dir.join("ready"))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the celery worker starts");
        let mut worker = Self { child, dir };
        let ready = worker.dir.join("ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if let Some(status) = worker.child.try_wait().unwrap() {
                panic!("the Celery worker exited ({status}):\n{}", worker.log());
            }
            assert!(
                Instant::now() < deadline,
                "the Celery worker did not get ready:\n{}",
                worker.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        worker
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }

    /// The calls recorded so far (complete lines only).
    pub fn calls(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("calls.jsonl")).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(|line| serde_json::from_str(line).expect("a call is JSON"))
            .collect()
    }

    /// Waits until `n` calls are recorded.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "the worker ran {} of {n} tasks: {calls:?}\n{}",
                calls.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(url: &str, tasks: &str, run: &str) -> Config {
    Config::default()
        .with_backend("celery")
        .with_source("celery-test")
        // Dead-letter topics of this run only.
        .with_dlq_topic(format!("{{topic}}.{run}.dlq"))
        .setting(URL_VARIABLE, url)
        .setting(TASKS_VARIABLE, tasks)
}

// ---- publishing: events run in the Python worker ---------------------------------------

#[derive(Serialize)]
pub struct User {
    id: u64,
    email: String,
}

#[event("user.registered", topic = "celery-test.users", key_field = "id")]
async fn register_user(email: String) -> Result<User, std::io::Error> {
    Ok(User { id: 42, email })
}

/// Done-when 1: `publish_event`, `#[event]` and `send` on `MESSAGING_BACKEND=celery` run as
/// tasks in a real Celery worker, the event's data as the argument.
pub async fn events_run_in_a_python_worker(url: &str) {
    let queue = unique("events");
    let tasks = format!(
        "user.mood.created=worker_tasks.process_mood_created@{queue},\
         celery-test.users=worker_tasks.user_registered@{queue},\
         celery-test.raw=worker_tasks.record@{queue}"
    );
    // As MESSAGING_BACKEND=celery does: the process-wide producer connects through the
    // registered `celery` backend.
    configure_messaging(config(url, &tasks, &queue));
    let worker = Worker::start(url, &[&queue]).await;

    let mood = json!({"user_id": "u-1", "score": 7, "tags": ["calm"]});
    let id = messaging_core::publish_event("user.mood.created", &mood, "celery-test.mood")
        .await
        .expect("published as a task");
    register_user("a@b.c".into()).await.unwrap();
    get_producer()
        .send("celery-test.raw", &json!([1, "two"]))
        .await
        .expect("sent as a task");
    let unmapped = messaging_core::publish_event("nobody.maps.this", &1, "celery-test.nowhere")
        .await
        .expect_err("an unmapped topic is an error");
    assert!(unmapped.to_string().contains("CELERY_TASKS"), "{unmapped}");

    let calls = worker.wait_for(3, Duration::from_secs(60)).await;
    let call = |task: &str| {
        calls
            .iter()
            .find(|c| c["task"] == task)
            .unwrap_or_else(|| panic!("{task} did not run: {calls:?}"))
    };
    let mood_call = call("worker_tasks.process_mood_created");
    assert_eq!(mood_call["args"], json!([mood]), "the data is the argument");
    assert_eq!(mood_call["kwargs"], json!({}));
    assert_eq!(
        mood_call["id"],
        json!(id.to_string()),
        "the task id is the event id"
    );
    let headers = &mood_call["headers"];
    assert_eq!(headers["x-event-name"], "user.mood.created");
    assert_eq!(headers["x-event-id"], json!(id.to_string()));
    assert_eq!(headers["x-event-source"], "celery-test");
    assert!(headers["x-event-timestamp"].is_string(), "{headers}");

    let user_call = call("worker_tasks.user_registered");
    assert_eq!(user_call["args"], json!([{"id": 42, "email": "a@b.c"}]));
    assert_eq!(user_call["headers"]["x-event-name"], "user.registered");
    assert_eq!(user_call["headers"]["x-message-key"], "42");

    let raw_call = call("worker_tasks.record");
    assert_eq!(raw_call["args"], json!([[1, "two"]]), "a raw body as it is");
    assert!(raw_call["headers"].get("x-event-name").is_none());

    drop(worker);
    python(url, &["delete-queues", &queue]).await;
}

// ---- consuming: Python tasks reach handlers --------------------------------------------

#[derive(Debug, Deserialize)]
struct Numbered {
    n: i64,
}

/// A handled task: its number, and its `x-celery-task` and `x-celery-task-id` headers.
type Handled = (i64, Option<String>, Option<String>);

static CONSUMED: Mutex<Vec<Handled>> = Mutex::new(Vec::new());
static FAILED_ATTEMPTS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static BULK: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[message_handler(topic = "celery-test.consume")]
async fn consume(task: Numbered, meta: Metadata) -> anyhow::Result<()> {
    CONSUMED.lock().unwrap().push((
        task.n,
        meta.headers.get("x-celery-task").map(str::to_owned),
        meta.headers.get("x-celery-task-id").map(str::to_owned),
    ));
    Ok(())
}

#[message_handler(topic = "celery-test.fails", max_retries = 2, retry_delay = "50ms")]
async fn always_fails(_task: Numbered, meta: Metadata) -> anyhow::Result<()> {
    FAILED_ATTEMPTS.lock().unwrap().push(meta.attempt);
    anyhow::bail!("the handler refuses task {}", meta.attempt)
}

static EVENTS_IN: Mutex<Vec<(String, String, i64)>> = Mutex::new(Vec::new());

#[message_handler(topic = "celery-test.events-in")]
async fn event_in(event: Event<Numbered>) -> anyhow::Result<()> {
    EVENTS_IN
        .lock()
        .unwrap()
        .push((event.name.clone(), event.source.clone(), event.data.n));
    Ok(())
}

#[message_handler(topic = "celery-test.bulk")]
async fn bulk(task: Numbered) -> anyhow::Result<()> {
    BULK.lock().unwrap().push(task.n);
    Ok(())
}

async fn start(config: Config, topics: &[&str]) -> Runtime {
    Runtime::builder()
        .config(config)
        .install_global_producer(false)
        .topics(topics.iter().copied())
        .start()
        .await
        .expect("the runtime starts on MESSAGING_BACKEND=celery")
}

async fn records(broker: &dyn Broker, topic: &str, want: usize) -> Vec<DeadLetterRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let browsed = broker.browse(topic, 100).await.expect("dlq list works");
        if browsed.len() >= want {
            return browsed
                .iter()
                .map(|m| DeadLetterRecord::from_bytes(&m.payload).expect("a DLQ record"))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{topic} holds {} of {want} records",
            browsed.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Done-when 2 (first half): tasks sent from Python with `send_task` reach the handler with
/// their argument; a failing handler retries, then dead-letters; a task that cannot be
/// decoded is dead-lettered with the reason.
pub async fn python_tasks_reach_handlers(url: &str) {
    let queue = unique("consume");
    let tasks = format!(
        "celery-test.consume=worker_tasks.consume_me@{queue},celery-test.fails=worker_tasks.fail_me@{queue},\
         celery-test.events-in=worker_tasks.event_in@{queue}"
    );
    let config = config(url, &tasks, &queue);
    let factory = messaging_core::broker::factory("celery").expect("linked");
    assert_eq!(
        factory
            .note_topic(&config, "celery-test.consume")
            .as_deref(),
        Some(format!("task worker_tasks.consume_me@{queue}").as_str()),
        "`consumer list` shows the task of a topic"
    );
    let runtime = start(
        config.clone(),
        &[
            "celery-test.consume",
            "celery-test.fails",
            "celery-test.events-in",
        ],
    )
    .await;

    python(url, &["send", "worker_tasks.consume_me", &queue, "3"]).await;
    python(url, &["send", "worker_tasks.fail_me", &queue, "1"]).await;
    python(url, &["send-pickled", "worker_tasks.consume_me", &queue]).await;

    eventually("three tasks handled", Duration::from_secs(30), || {
        CONSUMED.lock().unwrap().len() >= 3
    })
    .await;
    let consumed = CONSUMED.lock().unwrap().clone();
    let mut numbers: Vec<i64> = consumed.iter().map(|c| c.0).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [0, 1, 2], "{consumed:?}");
    for (_, task, id) in &consumed {
        assert_eq!(task.as_deref(), Some("worker_tasks.consume_me"));
        assert!(id.is_some(), "the Celery task id comes along");
    }

    let broker = messaging_core::broker::connect_once(&config).await.unwrap();
    // An event this crate publishes as a task comes back as the same event.
    messaging_core::Producer::new(broker.clone(), config.clone())
        .publish_event("numbered", &json!({"n": 7}), "celery-test.events-in")
        .await
        .unwrap();
    eventually("the event handled", Duration::from_secs(30), || {
        !EVENTS_IN.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *EVENTS_IN.lock().unwrap(),
        [("numbered".to_owned(), "celery-test".to_owned(), 7)]
    );
    let failed = records(&*broker, &format!("celery-test.fails.{queue}.dlq"), 1).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attempts, 3, "the first attempt and 2 retries");
    assert_eq!(failed[0].error.kind, messaging_core::FailureKind::Handler);
    assert_eq!(*FAILED_ATTEMPTS.lock().unwrap(), [1, 2, 3]);
    let original: Value = serde_json::from_str(&failed[0].original.payload).unwrap();
    assert_eq!(original, json!({"n": 0}), "the record keeps the argument");
    // `dlq replay`'s snapshot: a record not re-published stays, a re-published one leaves.
    let dlq = format!("celery-test.fails.{queue}.dlq");
    let snapshot = broker.dlq_snapshot(&dlq, 10).await.unwrap();
    assert_eq!(snapshot.records().len(), 1);
    snapshot.settle(Vec::new()).await.unwrap();
    assert_eq!(broker.browse(&dlq, 10).await.unwrap().len(), 1, "kept");
    let snapshot = broker.dlq_snapshot(&dlq, 10).await.unwrap();
    assert_eq!(snapshot.records().len(), 1);
    snapshot.settle(vec![0]).await.unwrap();
    assert!(broker.browse(&dlq, 10).await.unwrap().is_empty(), "removed");

    let undecodable = records(&*broker, &format!("celery-test.consume.{queue}.dlq"), 1).await;
    assert_eq!(undecodable.len(), 1);
    assert_eq!(
        undecodable[0].error.kind,
        messaging_core::FailureKind::Decode
    );
    let reason = undecodable[0]
        .original
        .headers
        .get("x-celery-decode-error")
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("JSON serializer"), "{:?}", undecodable[0]);
    assert_eq!(CONSUMED.lock().unwrap().len(), 3, "not handled as a task");

    runtime.shutdown().await.unwrap();
    python(
        url,
        &[
            "delete-queues",
            &queue,
            &format!("celery-test.fails.{queue}.dlq"),
            &format!("celery-test.consume.{queue}.dlq"),
        ],
    )
    .await;
}

/// Done-when 2 (second half): 1 000 tasks sent from Python are all handled, each once.
pub async fn a_thousand_tasks_are_handled(url: &str) {
    const N: usize = 1000;
    let queue = unique("bulk");
    let config = config(
        url,
        &format!("celery-test.bulk=worker_tasks.bulk@{queue}"),
        &queue,
    );
    let runtime = start(config.clone(), &["celery-test.bulk"]).await;
    python(url, &["send", "worker_tasks.bulk", &queue, &N.to_string()]).await;
    eventually("1 000 tasks handled", Duration::from_secs(120), || {
        BULK.lock().unwrap().len() >= N
    })
    .await;
    runtime.shutdown().await.unwrap();
    let handled = BULK.lock().unwrap().clone();
    let distinct: HashSet<i64> = handled.iter().copied().collect();
    assert_eq!(distinct.len(), N, "none lost");
    assert_eq!(handled.len(), N, "none handled twice");
    python(
        url,
        &[
            "delete-queues",
            &queue,
            &format!("celery-test.bulk.{queue}.dlq"),
        ],
    )
    .await;
}

// ---- a crash: what was not acknowledged comes back -------------------------------------

async fn collect(consumer: &mut dyn Consumer, want: usize) -> Vec<std::sync::Arc<Message>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next_batch(want - got.len())).await {
            Ok(batch) => got.extend(batch.expect("next_batch")),
            Err(_) => panic!("{} of {want} tasks arrived", got.len()),
        }
    }
    got
}

fn number(message: &Message) -> i64 {
    serde_json::from_slice::<Numbered>(&message.payload)
        .expect("the argument")
        .n
}

/// Tasks taken by an instance that dies before acknowledging them are delivered again to
/// another one; the acknowledged one is not.
pub async fn unacknowledged_tasks_come_back_after_a_crash(url: &str) {
    let queue = unique("crash");
    let options = || {
        let mut options = CeleryOptions::new(url).route(
            "celery-test.crash",
            "worker_tasks.crash_me",
            queue.clone(),
        );
        options.liveness = Duration::from_millis(800);
        options.release_on_drop = false;
        options
    };
    let subscription = Subscription {
        group: "crash".into(),
        topics: vec!["celery-test.crash".into()],
        start: StartFrom::Latest,
        prefetch: 10,
    };
    let doomed = CeleryBroker::connect(options()).await.unwrap();
    let mut consumer = doomed.subscribe(subscription.clone()).await.unwrap();
    python(url, &["send", "worker_tasks.crash_me", &queue, "3"]).await;
    let taken = collect(&mut *consumer, 3).await;
    let acked = number(&taken[0]);
    consumer.acker().ack(&taken[0]).await.unwrap();
    // A crash: nothing is put back, and the instance stops being alive.
    drop(consumer);
    drop(doomed);

    let survivor = CeleryBroker::connect(options()).await.unwrap();
    let mut consumer = survivor.subscribe(subscription).await.unwrap();
    let again = collect(&mut *consumer, 2).await;
    let mut numbers: Vec<i64> = again.iter().map(|m| number(m)).collect();
    numbers.sort_unstable();
    let mut expected: Vec<i64> = taken
        .iter()
        .map(|m| number(m))
        .filter(|n| *n != acked)
        .collect();
    expected.sort_unstable();
    assert_eq!(numbers, expected, "the unacknowledged tasks, and only they");
    consumer.acker().ack_batch(&again).await.unwrap();
    consumer.close().await.unwrap();
    python(url, &["delete-queues", &queue]).await;
}
