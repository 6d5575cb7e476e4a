//! The built `consumer` binary, as a team runs it (issue 6, done-when 1–4), on Redis:
//! `--topic`, `list`, `check`, SIGTERM during a slow handler, `/health` while the broker is
//! down and after it came, `/metrics`, and `dlq replay` into a fixed handler.
//!
//! Needs Redis on 127.0.0.1:6379 (`scripts/start-redis.sh`) and the `redis-server` binary;
//! fails, never skips, without them.
//!
//! Run with: cargo test -p messaging-tests --features redis --test cli

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use messaging_core::{Broker, OutgoingMessage};
use messaging_redis::RedisBroker;
use messaging_tests::dlq_record;
use messaging_tests::process::{free_addr, get, run_plain};

const REDIS: &str = "redis://127.0.0.1:6379/0";
const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture_consumer");
const DUPLICATES: &str = env!("CARGO_BIN_EXE_fixture_duplicates");
const NEEDS_STATE: &str = env!("CARGO_BIN_EXE_fixture_needs_state");
const EMPTY: &str = env!("CARGO_BIN_EXE_fixture_empty");

/// Names and files of one test.
struct Fixture {
    prefix: String,
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let prefix = format!("cli-{}", &id[id.len() - 12..]);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        Self { prefix, dir }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("handled.log")).unwrap_or_default()
    }

    fn lines(&self, starting: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with(starting))
            .count()
    }

    fn command(&self, binary: &str, redis_url: &str, args: &[&str]) -> Command {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("MESSAGING_BACKEND", "redis")
            .env("REDIS_URL", redis_url)
            .env("MESSAGING_CONNECT_RETRY_DELAY", "200ms")
            .env("MESSAGING_CONNECT_COOLDOWN", "1s")
            .env("FIXTURE_PREFIX", &self.prefix)
            .env("FIXTURE_LOG", self.dir.join("handled.log"))
            .env("FIXTURE_FIXED", self.dir.join("fixed"))
            .env("RUST_LOG", "info");
        command
    }

    /// Starts the fixture consumer; its output goes to a file in the fixture's directory.
    fn spawn(&self, redis_url: &str, args: &[&str]) -> Running {
        self.spawn_with(redis_url, args, &[])
    }

    /// [`Fixture::spawn`] with more environment variables.
    fn spawn_with(&self, redis_url: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let n = std::fs::read_dir(&self.dir).unwrap().count();
        let path = self.dir.join(format!("consumer-{n}.out"));
        let out = std::fs::File::create(&path).unwrap();
        let child = self
            .command(FIXTURE, redis_url, args)
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("the fixture consumer starts");
        Running(Some(child), path)
    }

    async fn publish(&self, name: &str, body: &str) {
        let broker = RedisBroker::connect_url(REDIS).await.unwrap_or_else(|e| {
            panic!("Redis is not reachable at {REDIS} (run scripts/start-redis.sh): {e}")
        });
        broker
            .publish(OutgoingMessage::new(
                self.topic(name),
                body.as_bytes().to_vec(),
            ))
            .await
            .unwrap();
    }
}

/// A consumer process, killed if the test ends before it exited, and the file of its output.
struct Running(Option<Child>, PathBuf);

impl Running {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let pid = self.0.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.0.as_mut().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the consumer did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn pending(stream: &str, group: &str) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "XPENDING", stream, group])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or(u64::MAX)
}

/// The names of the consumer groups of `stream` (`XINFO GROUPS`; none when it has none).
fn groups(stream: &str) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "XINFO", "GROUPS", stream])
        .output()
        .expect("redis-cli runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.starts_with("ERR"),
        "XINFO GROUPS {stream}: {text}"
    );
    let fields: Vec<&str> = text.lines().map(str::trim).collect();
    fields
        .windows(2)
        .filter(|pair| pair[0] == "name")
        .map(|pair| pair[1].to_owned())
        .collect()
}

#[tokio::test]
async fn topic_flag_runs_only_the_named_handlers_and_list_shows_them_all() {
    let f = Fixture::new();
    let list = f.command(FIXTURE, REDIS, &["list"]).output().unwrap();
    assert!(list.status.success());
    let table = String::from_utf8(list.stdout).unwrap();
    for name in ["record", "other", "slow", "fixable"] {
        assert!(
            table.lines().any(|l| l.contains(&f.topic(name))),
            "`list` lacks {name}:\n{table}"
        );
    }
    // Every column, on the handler with a retry policy: kind, name, topic, group, event,
    // retries, delay, back-off, schema, published topic, idempotent, DLQ.
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "KIND",
            "HANDLER",
            "TOPICS",
            "GROUP",
            "EVENT",
            "RETRIES",
            "DELAY",
            "BACKOFF",
            "SCHEMA",
            "PUBLISHES",
            "IDEMPOTENT",
            "DLQ"
        ]
    );
    let fixable: Vec<&str> = table
        .lines()
        .find(|l| l.contains(&f.topic("fixable")))
        .unwrap()
        .split_whitespace()
        .collect();
    let dlq = format!("{}.dlq", f.topic("fixable"));
    assert_eq!(
        fixable,
        [
            "message_handler",
            "fixable",
            &f.topic("fixable"),
            "fixable",
            "-",
            "1",
            "100ms",
            "constant",
            "-",
            "-",
            "-",
            &dlq
        ],
        "{table}"
    );

    let mut consumer = f.spawn(REDIS, &["--topic", &f.topic("record"), "--from-beginning"]);
    f.publish("other", "o1").await;
    f.publish("record", "r1").await;
    eventually("the record handler", Duration::from_secs(30), || {
        f.lines("record r1") == 1
    })
    .await;
    // Every group is subscribed before any message is handled: had `--topic` let the other
    // handler in, its group would be on the other stream by now.
    assert_eq!(
        groups(&f.topic("other")),
        Vec::<String>::new(),
        "a group outside --topic subscribed"
    );
    assert_eq!(
        f.lines("other"),
        0,
        "a handler outside --topic ran:\n{}",
        f.log()
    );
    consumer.signal("-TERM");
    assert!(consumer.wait(Duration::from_secs(15)).success());

    let unknown = f
        .command(FIXTURE, REDIS, &["--topic", "no.such.topic"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no handler for no.such.topic") && stderr.contains(&f.topic("record")),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_fails_on_a_duplicate_handler_and_names_it() {
    let f = Fixture::new();
    let bad = f.command(DUPLICATES, REDIS, &["check"]).output().unwrap();
    assert!(!bad.status.success(), "check passed a duplicate");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("charge") && out.contains("charge_again") && out.contains("fixture.orders"),
        "{out}"
    );
    let good = f.command(FIXTURE, REDIS, &["check"]).output().unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
}

#[tokio::test]
async fn sigterm_lets_the_slow_handler_finish_and_acknowledges_it() {
    let f = Fixture::new();
    let mut consumer = f.spawn(
        REDIS,
        &[
            "--topic",
            &f.topic("slow"),
            "--topic",
            &f.topic("record"),
            "--from-beginning",
        ],
    );
    f.publish("slow", "s1").await;
    eventually("the slow handler to start", Duration::from_secs(30), || {
        f.lines("start s1") == 1
    })
    .await;
    consumer.signal("-TERM");
    let status = consumer.wait(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        f.lines("done s1"),
        1,
        "the in-flight handler was cut short:\n{}",
        f.log()
    );
    assert_eq!(
        pending(&f.topic("slow"), "slow"),
        0,
        "the finished message is still pending"
    );

    // The next start does not see it again.
    let mut again = f.spawn(
        REDIS,
        &[
            "--topic",
            &f.topic("slow"),
            "--topic",
            &f.topic("record"),
            "--from-beginning",
        ],
    );
    f.publish("record", "marker").await;
    eventually("the marker", Duration::from_secs(30), || {
        f.lines("record marker") == 1
    })
    .await;
    // Nothing of the slow stream is pending in any of its groups (s1's, checked before the
    // restart too), so nothing there can be delivered again.
    let slow = f.topic("slow");
    assert_eq!(groups(&slow), ["slow"], "one group on {slow}");
    assert_eq!(pending(&slow, "slow"), 0, "entries of {slow} held");
    assert_eq!(
        f.lines("start s1"),
        1,
        "the acknowledged message was redelivered"
    );
    again.signal("-INT");
    assert!(again.wait(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let f = Fixture::new();
    let mut consumer = f.spawn_with(
        REDIS,
        &["--topic", &f.topic("slow"), "--from-beginning"],
        &[("FIXTURE_SLOW_MS", "60000")],
    );
    f.publish("slow", "s2").await;
    eventually("the slow handler to start", Duration::from_secs(30), || {
        f.lines("start s2") == 1
    })
    .await;
    consumer.signal("-TERM");
    eventually("the shutdown to begin", Duration::from_secs(10), || {
        consumer.output().contains("shutting down")
    })
    .await;
    let asked = Instant::now();
    consumer.signal("-TERM");
    let status = consumer.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", consumer.output());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    assert_eq!(f.lines("done s2"), 0, "the handler was not cut short");
    // Cut short, so not acknowledged: the next consumer of the group gets it again.
    assert_eq!(pending(&f.topic("slow"), "slow"), 1);
}

/// A `redis-server` of this test's own, so it can be down first.
struct OwnRedis(Child);

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("the redis-server binary runs");
        Self(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn health_is_503_while_the_broker_is_down_then_200_and_the_backlog_is_handled() {
    let f = Fixture::new();
    let port = free_addr().port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let health = free_addr();
    let mut consumer = f.spawn_with(
        &url,
        &[
            "--health-addr",
            &health.to_string(),
            "--topic",
            &f.topic("record"),
            "--from-beginning",
        ],
        &[("MESSAGING_CONNECT_MAX_RETRIES", "3")],
    );

    let retry_count = |body: &str| -> u64 {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["retry_count"]
            .as_u64()
            .unwrap()
    };
    let mut first = None;
    eventually("/health answering 503", Duration::from_secs(30), || {
        first = get(health, "/health").filter(|(status, _)| *status == 503);
        first.is_some()
    })
    .await;
    let (_, body) = first.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], false, "{json}");
    assert_eq!(get(health, "/health/live").map(|(s, _)| s), Some(200));
    let (status, ready) = get(health, "/health/ready").unwrap();
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("not connected"), "{ready}");
    assert_eq!(json["broker"], "redis");
    assert_eq!(json["enabled"], true);
    assert_eq!(json["handlers"], 1);
    assert!(
        json["timestamp"].is_string() && json["in_cooldown"].is_boolean(),
        "{json}"
    );
    let before = retry_count(&body);
    eventually("the retry count to rise", Duration::from_secs(30), || {
        get(health, "/health").is_some_and(|(s, b)| s == 503 && retry_count(&b) > before)
    })
    .await;
    // Three attempts 200 ms apart, then a cooldown of 1 s, reported and logged.
    eventually(
        "/health reporting the cooldown",
        Duration::from_secs(30),
        || {
            get(health, "/health").is_some_and(|(s, b)| {
                s == 503
                    && b.contains("\"in_cooldown\":true")
                    && b.contains("\"status\":\"cooling_down\"")
            })
        },
    )
    .await;
    let output = consumer.output();
    for line in [
        "Connecting… (attempt 2/3)",
        "Connecting… (attempt 3/3)",
        "Cooling down for 1s",
    ] {
        assert!(output.contains(line), "no {line:?} in:\n{output}");
    }

    let _redis = OwnRedis::start(port);
    let own = loop {
        if let Ok(broker) = RedisBroker::connect_url(&url).await {
            break broker;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    own.publish(OutgoingMessage::new(
        f.topic("record"),
        b"while-down".to_vec(),
    ))
    .await
    .unwrap();
    eventually("/health answering 200", Duration::from_secs(30), || {
        get(health, "/health")
            .is_some_and(|(s, b)| s == 200 && b.contains("\"status\":\"connected\""))
    })
    .await;
    eventually(
        "/health/ready answering 200",
        Duration::from_secs(30),
        || {
            get(health, "/health/ready")
                .is_some_and(|(s, b)| s == 200 && b.contains("\"ready\":true"))
        },
    )
    .await;
    eventually("the backlog handled", Duration::from_secs(30), || {
        f.lines("record while-down") == 1
    })
    .await;
    consumer.signal("-TERM");
    assert!(consumer.wait(Duration::from_secs(15)).success());
}

fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_move_and_dlq_replay_feeds_the_fixed_handler() {
    let f = Fixture::new();
    let health = free_addr();
    let mut consumer = f.spawn(
        REDIS,
        &["--health-addr", &health.to_string(), "--from-beginning"],
    );
    let metrics = || {
        get(health, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let (record, fixable) = (
        format!("topic=\"{}\"", f.topic("record")),
        format!("topic=\"{}\"", f.topic("fixable")),
    );

    f.publish("record", "m1").await;
    f.publish("fixable", "broken-1").await;
    eventually("the record handled", Duration::from_secs(30), || {
        metric(
            &metrics(),
            "messaging_handled_total",
            &[&record, "outcome=\"ok\""],
        ) == Some(1.0)
    })
    .await;
    eventually(
        "the fixable message dead-lettered",
        Duration::from_secs(30),
        || metric(&metrics(), "messaging_dead_lettered_total", &[&fixable]) == Some(1.0),
    )
    .await;
    let text = metrics();
    assert_eq!(
        metric(&text, "messaging_retried_total", &[&fixable]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "messaging_handler_attempts_total", &[&fixable]),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "messaging_handled_total",
            &[&fixable, "outcome=\"dead_lettered\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "messaging_handler_duration_seconds_count",
            &[&record]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "messaging_backend", &["backend=\"redis\""]),
        Some(1.0)
    );

    let listed = f
        .command(
            FIXTURE,
            REDIS,
            &["dlq", "list", "--topic", &f.topic("fixable")],
        )
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("attempts=2") && listed.contains("not fixed yet"),
        "{listed}"
    );

    // The fix ships; the records go back to their topic and the running consumer takes them.
    std::fs::write(f.dir.join("fixed"), "").unwrap();
    let replay = f
        .command(
            FIXTURE,
            REDIS,
            &["dlq", "replay", "--topic", &f.topic("fixable")],
        )
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains("replayed 1, skipped 0, left 0"),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
    eventually(
        "the replayed message handled",
        Duration::from_secs(30),
        || f.lines("fixed broken-1") == 1,
    )
    .await;
    let again = f
        .command(
            FIXTURE,
            REDIS,
            &["dlq", "replay", "--topic", &f.topic("fixable")],
        )
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("replayed 0, skipped 0, left 0"),
        "a record was replayed twice"
    );
    consumer.signal("-TERM");
    assert!(consumer.wait(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn a_global_dlq_topic_is_replayed_per_original_topic() {
    let f = Fixture::new();
    let shared = f.topic("dead-letters");
    let (a, b) = (f.topic("alpha"), f.topic("beta"));
    let broker = RedisBroker::connect_url(REDIS).await.unwrap_or_else(|e| {
        panic!("Redis is not reachable at {REDIS} (run scripts/start-redis.sh): {e}")
    });
    for (topic, body) in [(&a, "a-1"), (&b, "b-1"), (&a, "a-2")] {
        broker
            .publish(dlq_record(topic, body).to_message(&shared))
            .await
            .unwrap();
    }
    let run = |args: &[&str]| {
        let out = f
            .command(FIXTURE, REDIS, args)
            .env("MESSAGING_DLQ_TOPIC", &shared)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let listed = run(&["dlq", "list", "--topic", &a]);
    assert_eq!(listed.lines().count(), 2, "only alpha's records:\n{listed}");
    assert!(listed.lines().all(|l| l.contains(&a)), "{listed}");
    // beta's one record comes after alpha's first: a limit of 1 still finds it.
    let listed = run(&["dlq", "list", "--topic", &b, "--limit", "1"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains(&b), "{listed}");

    let replayed = run(&["dlq", "replay", "--topic", &a]);
    assert!(
        replayed.contains("replayed 2, skipped 0, left 0"),
        "{replayed}"
    );
    // beta's record was passed over by alpha's replay, not taken: its own replay gets it.
    let replayed = run(&["dlq", "replay", "--topic", &b]);
    assert!(
        replayed.contains("replayed 1, skipped 0, left 0"),
        "{replayed}"
    );
    let again = run(&["dlq", "replay", "--topic", &a]);
    assert!(again.contains("replayed 0, skipped 0, left 0"), "{again}");

    let bodies = |topic: &str| {
        let broker = broker.clone();
        let topic = topic.to_owned();
        async move {
            let mut bodies: Vec<String> = broker
                .browse(&topic, 10)
                .await
                .unwrap()
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            bodies.sort();
            bodies
        }
    };
    assert_eq!(bodies(&a).await, ["a-1", "a-2"]);
    assert_eq!(bodies(&b).await, ["b-1"]);
}

#[test]
fn check_fails_on_a_missing_state_and_names_it() {
    let (status, out, err, _) = run_plain(NEEDS_STATE, &["check"], &[]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("needs `State<") && out.contains("Db>`"),
        "{out}"
    );
    assert!(out.contains(".state("), "says how to register it: {out}");
}

#[test]
fn a_consumer_with_no_handler_exits_1_and_names_the_fix() {
    let (status, out, err, _) = run_plain(
        EMPTY,
        &[],
        &[("MESSAGING_BACKEND", "redis"), ("REDIS_URL", REDIS)],
    );
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("no handler is linked"), "{err}");
    assert!(err.contains("main!"), "names the fix: {err}");
    let (status, out, _, _) = run_plain(EMPTY, &["check"], &[]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("no handler is linked"), "{out}");
}

#[test]
fn dlq_commands_refuse_the_memory_broker_unless_it_is_named() {
    let (status, _, err, _) = run_plain(FIXTURE, &["dlq", "list", "--topic", "t"], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("MESSAGING_BACKEND"), "{err}");
    let (status, _, err, _) = run_plain(FIXTURE, &["dlq", "replay", "--topic", "t"], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    let (status, _, err, _) = run_plain(
        FIXTURE,
        &["dlq", "list", "--topic", "t", "--broker", "memory"],
        &[],
    );
    assert!(status.success(), "{err}");
}

#[test]
fn malformed_redis_settings_fail_at_once_naming_the_variable() {
    for url in [
        "redis://127.0.0.1:6379/0?maxlen=notanumber",
        "not-a-url",
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:6379/abc",
        "http://127.0.0.1:6379/0",
        "",
    ] {
        let (status, out, err, took) = run_plain(
            FIXTURE,
            &[],
            &[("MESSAGING_BACKEND", "redis"), ("REDIS_URL", url)],
        );
        assert_eq!(status.code(), Some(1), "REDIS_URL={url:?}: {out}{err}");
        assert!(
            took < Duration::from_secs(2),
            "REDIS_URL={url:?} took {took:?}"
        );
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("REDIS_URL")).collect();
        assert_eq!(lines.len(), 1, "one line naming REDIS_URL={url:?}:\n{err}");
    }
}
