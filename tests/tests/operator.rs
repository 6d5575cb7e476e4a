//! The operator's first day on Kafka, RabbitMQ and Redis (issue 21), with the built `consumer`: a
//! setting that can never work ends the process at once naming its variable, `/health/ready`
//! turns 200 on Kafka only once partitions are assigned (and a message published then is
//! handled), and the log stays quiet while the Kafka broker is down.
//!
//! Needs Kafka (Tansu) on 127.0.0.1:9092 and RabbitMQ on 127.0.0.1:5672; fails, never skips,
//! without them.
//!
//! Run with: cargo test -p messaging-tests --all-features --test operator

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use messaging_core::{Broker, OutgoingMessage};
use messaging_kafka::KafkaBroker;
use messaging_tests::dlq_record;
use messaging_tests::process::{free_addr, get, run_plain};

const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture_consumer");
const KAFKA: &str = "127.0.0.1:9092";

fn assert_fails_at_once(env: &[(&str, &str)], variable: &str) {
    let (status, out, err, took) = run_plain(FIXTURE, &[], env);
    assert_eq!(status.code(), Some(1), "{env:?}: {out}{err}");
    assert!(took < Duration::from_secs(2), "{env:?} took {took:?}");
    let naming: Vec<&str> = err.lines().filter(|l| l.contains(variable)).collect();
    assert_eq!(
        naming.len(),
        1,
        "one line naming {variable} for {env:?}:\n{err}"
    );
}

#[test]
fn malformed_kafka_settings_fail_at_once_naming_the_variable() {
    let kafka = [
        ("MESSAGING_BACKEND", "kafka"),
        ("KAFKA_BOOTSTRAP_SERVERS", KAFKA),
    ];
    for (variable, value) in [
        ("KAFKA_CONFIG_NO_SUCH_PROPERTY", "1"),
        ("KAFKA_CONFIG_SESSION_TIMEOUT_MS", "banana"),
        // A client's own property names its own variable.
        ("KAFKA_PRODUCER_CONFIG_LINGER_MS", "banana"),
        ("KAFKA_ADMIN_CONFIG_NO_SUCH_PROPERTY", "1"),
        ("KAFKA_CONSUMER_CONFIG_SESSION_TIMEOUT_MS", "banana"),
    ] {
        let mut env = kafka.to_vec();
        env.push((variable, value));
        assert_fails_at_once(&env, variable);
    }
    assert_fails_at_once(
        &[
            ("MESSAGING_BACKEND", "kafka"),
            ("KAFKA_BOOTSTRAP_SERVERS", ""),
        ],
        "KAFKA_BOOTSTRAP_SERVERS",
    );
}

#[test]
fn malformed_redis_settings_fail_at_once_naming_the_variable() {
    for url in ["", "not a url", "http://127.0.0.1:6379/0"] {
        assert_fails_at_once(
            &[("MESSAGING_BACKEND", "redis"), ("REDIS_URL", url)],
            "REDIS_URL",
        );
    }
}

/// `consumer check` asks the selected broker crate about its own settings, without
/// connecting: each one that can never work is a problem naming its variable.
#[test]
fn check_reports_a_broker_setting_that_can_never_work() {
    for (env, variable) in [
        (
            &[("MESSAGING_BACKEND", "kafka"), ("KAFKA_API_KEY", "k")][..],
            "KAFKA_API_SECRET",
        ),
        (
            &[
                ("MESSAGING_BACKEND", "kafka"),
                ("KAFKA_CONSUMER_CONFIG_MESSAGING_JOIN_TIMEOUT_MS", "5"),
            ][..],
            "KAFKA_CONSUMER_CONFIG_MESSAGING_JOIN_TIMEOUT_MS",
        ),
        (
            &[
                ("MESSAGING_BACKEND", "kafka"),
                ("KAFKA_BOOTSTRAP_SERVERS", ""),
            ][..],
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
        (
            &[
                ("MESSAGING_BACKEND", "rabbitmq"),
                ("RABBITMQ_URL", "http://h/"),
            ][..],
            "RABBITMQ_URL",
        ),
        (
            &[("MESSAGING_BACKEND", "redis"), ("REDIS_URL", "")][..],
            "REDIS_URL",
        ),
    ] {
        let (status, out, err, _) = run_plain(FIXTURE, &["check"], env);
        assert_eq!(status.code(), Some(1), "{env:?}: {out}{err}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("problem:") && l.contains(variable)),
            "{env:?}: no problem naming {variable}:\n{out}{err}"
        );
    }
    let (status, out, err, _) = run_plain(
        FIXTURE,
        &["check"],
        &[
            ("MESSAGING_BACKEND", "kafka"),
            ("KAFKA_BOOTSTRAP_SERVERS", KAFKA),
            ("KAFKA_PRODUCER_CONFIG_LINGER_MS", "5"),
        ],
    );
    assert!(status.success(), "{out}{err}");
}

#[test]
fn malformed_rabbitmq_settings_fail_at_once_naming_the_variable() {
    for url in [
        "not a url",
        "http://guest:guest@127.0.0.1:5672/%2f",
        "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
        "",
    ] {
        assert_fails_at_once(
            &[("MESSAGING_BACKEND", "rabbitmq"), ("RABBITMQ_URL", url)],
            "RABBITMQ_URL",
        );
    }
}

#[tokio::test]
async fn kafka_is_ready_only_once_assigned_and_then_handles_what_is_published() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("op-{}", &id[id.len() - 12..]);
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("handled.log");
    let health = free_addr();
    let out = std::fs::File::create(dir.join("consumer.out")).unwrap();
    let topic = format!("{prefix}.record");
    let broker = KafkaBroker::connect(KAFKA).await.unwrap_or_else(|e| {
        panic!("Kafka is not reachable at {KAFKA} (run scripts/start-kafka.sh): {e}")
    });
    // The topic exists before the consumer starts, so that the group's assignment is the only
    // thing readiness waits for.
    broker
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    let mut child = Command::new(FIXTURE)
        .args(["--topic", &topic, "--health-addr", &health.to_string()])
        .env("MESSAGING_BACKEND", "kafka")
        .env("KAFKA_BOOTSTRAP_SERVERS", KAFKA)
        .env("FIXTURE_PREFIX", &prefix)
        .env("FIXTURE_LOG", &log)
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_unready = false;
    loop {
        match get(health, "/health/ready") {
            Some((200, _)) => break,
            Some((503, body)) => {
                saw_unready = true;
                assert!(body.contains("\"ready\":false"), "{body}");
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "/health/ready never turned 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_unready, "/health/ready was 200 before the assignment");
    // Published right after readiness, with the group starting at the latest offset.
    broker
        .publish(OutgoingMessage::new(topic.clone(), b"just-ready".to_vec()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("record just-ready")
    {
        assert!(
            Instant::now() < deadline,
            "the message published on readiness was not handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = std::fs::read_to_string(dir.join("consumer.out")).unwrap();
    let consuming = output.lines().position(|l| l.contains("consuming"));
    assert!(consuming.is_some(), "no 'consuming' line:\n{output}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn the_log_stays_quiet_while_kafka_is_down() {
    let down = free_addr().to_string();
    let mut child = Command::new(FIXTURE)
        .env("MESSAGING_BACKEND", "kafka")
        .env("KAFKA_BOOTSTRAP_SERVERS", &down)
        .env("MESSAGING_CONNECT_RETRY_DELAY", "1s")
        .env("RUST_LOG", "info")
        .env("FIXTURE_LOG", "/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(30));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let lines = log.lines().count();
    assert!(
        lines <= 10,
        "{lines} lines in 30 s while Kafka was down:\n{log}"
    );
}

#[tokio::test]
async fn kafka_replay_with_the_consumer_stopped_publishes_every_record_at_once() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("op-{}", &id[id.len() - 12..]);
    let topic = format!("{prefix}.fixable");
    let broker = KafkaBroker::connect(KAFKA).await.unwrap_or_else(|e| {
        panic!("Kafka is not reachable at {KAFKA} (run scripts/start-kafka.sh): {e}")
    });
    for i in 0..68 {
        broker
            .publish(
                dlq_record(&topic, &format!("\"order-{i}\"")).to_message(&format!("{topic}.dlq")),
            )
            .await
            .unwrap();
    }
    let env = [
        ("MESSAGING_BACKEND", "kafka"),
        ("KAFKA_BOOTSTRAP_SERVERS", KAFKA),
        ("FIXTURE_PREFIX", prefix.as_str()),
        ("FIXTURE_LOG", "/dev/null"),
    ];
    let (status, out, err, took) = run_plain(FIXTURE, &["dlq", "replay", "--topic", &topic], &env);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("replayed 68, skipped 0, left 0"), "{out}{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (status, out, err, _) = run_plain(FIXTURE, &["dlq", "list", "--topic", &topic], &env);
    assert!(status.success(), "{err}");
    assert_eq!(
        out.lines().count(),
        0,
        "replayed records are no longer listed:\n{out}"
    );
    let copies = broker.browse(&topic, 1_000).await.unwrap();
    assert_eq!(copies.len(), 68, "each record published once to its topic");
}
