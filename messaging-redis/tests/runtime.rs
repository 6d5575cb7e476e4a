//! The real runtime on Redis: an instance killed mid-flow, a Redis server restarted mid-run,
//! and dead-letter records identical to the memory broker's (issue 5, done-when 2–4).
//! Needs Redis on 127.0.0.1:6379 and the `redis-server` binary.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use messaging_core::{
    Broker, DeadLetterRecord, HandlerError, HandlerSpec, Invocation, MemoryBroker, OutgoingMessage,
    Producer, RetryPolicy, Runtime,
};
use messaging_redis::{RedisBroker, RedisOptions};
use tokio::time::Instant;

async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn number(inv: &Invocation) -> u64 {
    std::str::from_utf8(&inv.message.payload)
        .unwrap()
        .parse()
        .unwrap()
}

async fn start(broker: Arc<dyn Broker>, handler: HandlerSpec) -> Runtime {
    Runtime::builder()
        .broker(broker)
        .without_registered()
        .install_global_producer(false)
        .concurrency(4)
        .handler(handler)
        .start()
        .await
        .expect("runtime starts")
}

/// Done-when 2: of two instances of a group, one dies (its handlers hang, then it is dropped
/// without acknowledging and without handing anything back, as a crash) while 10 000 messages
/// flow; the other reclaims what the dead one held and every message is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_reclaimed_while_10000_messages_flow() {
    const N: u64 = 10_000;
    let topic = unique("kill");
    let group = unique("kill-group");
    let reclaim = RedisOptions {
        reclaim_idle: Duration::from_secs(1),
        ..RedisOptions::default()
    };
    let crashing = connect(RedisOptions {
        release_on_drop: false,
        consumer_prefix: "doomed".into(),
        ..reclaim.clone()
    })
    .await;
    let surviving = connect(RedisOptions {
        consumer_prefix: "survivor".into(),
        ..reclaim
    })
    .await;

    let handled: Arc<Mutex<HashMap<u64, Vec<&'static str>>>> = Arc::default();
    let stuck: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let doomed = {
        let (handled, stuck, killed) = (handled.clone(), stuck.clone(), killed.clone());
        HandlerSpec::new("worker", [topic.clone()], move |inv: Invocation| {
            let (handled, stuck, killed) = (handled.clone(), stuck.clone(), killed.clone());
            async move {
                let n = number(&inv);
                if killed.load(Ordering::SeqCst) {
                    stuck.lock().unwrap().insert(n);
                    std::future::pending::<()>().await;
                }
                handled.lock().unwrap().entry(n).or_default().push("doomed");
                Ok(())
            }
        })
        .group(&group)
    };
    let survivor = {
        let handled = handled.clone();
        HandlerSpec::new("worker", [topic.clone()], move |inv: Invocation| {
            let handled = handled.clone();
            async move {
                handled
                    .lock()
                    .unwrap()
                    .entry(number(&inv))
                    .or_default()
                    .push("survivor");
                Ok(())
            }
        })
        .group(&group)
    };
    let doomed = start(crashing.into_dyn(), doomed).await;
    let survivor = start(surviving.clone().into_dyn(), survivor).await;

    let producer = Producer::new(
        surviving.clone().into_dyn(),
        messaging_core::Config::default(),
    );
    let topic_name = topic.clone();
    let publishing = tokio::spawn(async move {
        for chunk in 0..40 {
            let sends = (0..N / 40).map(|i| {
                let n = chunk * (N / 40) + i;
                let message =
                    OutgoingMessage::new(&topic, n.to_string()).with_key(format!("k{}", n % 16));
                let producer = producer.clone();
                async move { producer.send_raw(message).await }
            });
            for result in futures::future::join_all(sends).await {
                result.expect("publish acknowledged");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });

    let by = |who: &str| {
        handled
            .lock()
            .unwrap()
            .values()
            .filter(|v| v.contains(&who))
            .count()
    };
    eventually(
        "the doomed instance at work",
        Duration::from_secs(30),
        || by("doomed") >= 500,
    )
    .await;
    killed.store(true, Ordering::SeqCst);
    eventually(
        "the doomed instance holding messages",
        Duration::from_secs(30),
        || !stuck.lock().unwrap().is_empty(),
    )
    .await;
    drop(doomed);
    let held_when_killed = pending_of(&surviving, &topic_name, &group, "doomed").await;
    assert!(
        held_when_killed > 0,
        "the dead instance held nothing unacknowledged"
    );

    publishing.await.unwrap();
    eventually("every message handled", Duration::from_secs(60), || {
        handled.lock().unwrap().len() as u64 == N
    })
    .await;
    let handled = handled.lock().unwrap().clone();
    let stuck = stuck.lock().unwrap().clone();
    for n in &stuck {
        assert!(
            handled[n].contains(&"survivor"),
            "{n} was held by the dead instance and never reclaimed"
        );
    }
    assert_eq!(
        pending_of(&surviving, &topic_name, &group, "doomed").await,
        0,
        "everything the dead instance held was reclaimed"
    );
    println!(
        "{N} messages: {} handled by the doomed instance, {held_when_killed} held when it died (of which {} in a handler), all reclaimed",
        by_count(&handled, "doomed"),
        stuck.len()
    );
    survivor.shutdown().await.unwrap();
}

fn by_count(handled: &HashMap<u64, Vec<&'static str>>, who: &str) -> usize {
    handled.values().filter(|v| v.contains(&who)).count()
}

/// A `redis-server` of the test's own on a free loopback port, killed with the test.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    async fn start(port: u16) -> Self {
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
            .expect("the `redis-server` binary must be installed");
        let server = Self { port, child };
        let client = redis::Client::open(server.url()).unwrap();
        eventually("the test's redis-server", Duration::from_secs(10), || {
            client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        })
        .await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Done-when 3: the server is killed and started again (empty: no persistence) mid-run; the
/// runtime recovers by itself, groups included, and handles what is published afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_resumes_after_a_redis_restart() {
    let port = free_port();
    let server = Server::start(port).await;
    let options = RedisOptions {
        reclaim_idle: Duration::from_secs(1),
        ..RedisOptions::default()
    };
    let broker = RedisBroker::connect(&server.url(), options)
        .await
        .expect("the test server answers");
    let topic = unique("restart");
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        HandlerSpec::new("restartable", [topic.clone()], move |inv: Invocation| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .insert(String::from_utf8_lossy(&inv.message.payload).into_owned());
                Ok(())
            }
        })
    };
    let runtime = start(broker.clone().into_dyn(), handler).await;
    for i in 0..50 {
        broker
            .publish(OutgoingMessage::new(&topic, format!("before-{i}")))
            .await
            .unwrap();
    }
    eventually(
        "the messages before the restart",
        Duration::from_secs(20),
        || seen.lock().unwrap().len() == 50,
    )
    .await;

    server.stop();
    // The server stays away a moment (the scenario, not a wait): `stop` waited for its exit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = Server::start(port).await;

    for i in 0..50 {
        // The first publish finds the old connection dead; the broker reconnects and retries.
        broker
            .publish(OutgoingMessage::new(&topic, format!("after-{i}")))
            .await
            .unwrap_or_else(|e| panic!("publish {i} after the restart: {e}"));
    }
    eventually(
        "the messages after the restart",
        Duration::from_secs(30),
        || {
            let seen = seen.lock().unwrap();
            (0..50).all(|i| seen.contains(&format!("after-{i}")))
        },
    )
    .await;
    runtime.shutdown().await.unwrap();
    drop(server);
}

/// Dead-letters `message` on `broker` and returns its record: raw, parsed, and the DLQ header.
async fn dead_letter_on(
    broker: Arc<dyn Broker>,
    message: OutgoingMessage,
) -> (serde_json::Value, DeadLetterRecord, String) {
    let topic = message.topic.clone();
    let failing = HandlerSpec::new(
        "always_fails",
        [topic.clone()],
        |_inv: Invocation| async move { Err::<(), _>(HandlerError::retryable("card declined")) },
    )
    .group("payments")
    .retry(RetryPolicy::new(1, Duration::from_millis(10)));
    let runtime = start(Arc::clone(&broker), failing).await;
    broker.publish(message).await.unwrap();

    let dlq = messaging_core::dlq::default_dlq_topic(&topic);
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        if let Some(m) = broker.browse(&dlq, 10).await.unwrap().into_iter().next() {
            break m;
        }
        assert!(Instant::now() < deadline, "no DLQ record on {dlq}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    runtime.shutdown().await.unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
    let parsed = DeadLetterRecord::from_bytes(&record.payload).expect("the record parses");
    let dlq_header = record
        .header(messaging_core::dlq::DLQ_HEADER)
        .unwrap_or("")
        .to_owned();
    (raw, parsed, dlq_header)
}

/// The shape of a JSON value: objects by their keys, recursively.
fn shape(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), shape(v))).collect(),
        serde_json::Value::Null => "null".into(),
        serde_json::Value::String(_) => "string".into(),
        serde_json::Value::Number(_) => "number".into(),
        other => other.clone(),
    }
}

/// Done-when 4: the same failure gives the same record on Redis as on the memory broker,
/// field for field, apart from times, the record's own id and the position, which is the
/// stream entry id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_records_match_the_memory_brokers() {
    let topic = unique("dlq-schema");
    let memory_broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let config = messaging_core::Config::default().with_source("dlq-schema");
    // One message, published to both.
    let (_, mut message) = Producer::new(Arc::clone(&memory_broker), config)
        .envelope(
            "order.created",
            &serde_json::json!({"order_id": 42}),
            &topic,
            Some("42".into()),
        )
        .unwrap();
    message.headers.insert("x-trace-id", "trace-abc");
    let (memory_raw, memory, memory_header) = dead_letter_on(memory_broker, message.clone()).await;
    let redis = connect(RedisOptions::default()).await.into_dyn();
    let (redis_raw, on_redis, redis_header) = dead_letter_on(redis, message).await;

    assert_eq!(shape(&redis_raw), shape(&memory_raw), "same JSON schema");
    assert_eq!((memory_header.as_str(), redis_header.as_str()), ("1", "1"));
    let id = on_redis
        .original
        .position
        .strip_prefix("stream id ")
        .expect("a stream id position");
    let (ms, seq) = id.split_once('-').expect("<ms>-<seq>");
    assert!(
        ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
        "{id}"
    );
    assert_eq!(memory.original.position, "offset 0");

    // Each record has an id of its own (a UUID v7).
    assert!(memory.id.is_some() && on_redis.id.is_some() && memory.id != on_redis.id);
    let normalise = |mut r: DeadLetterRecord| {
        let t = chrono::DateTime::<chrono::Utc>::MIN_UTC;
        (r.first_failure_at, r.last_failure_at, r.dead_lettered_at) = (t, t, t);
        r.original.position.clear();
        r.id = None;
        r
    };
    let (memory, on_redis) = (normalise(memory), normalise(on_redis));
    assert_eq!(on_redis, memory, "the same record on both brokers");
    assert_eq!(on_redis.attempts, 2);
    assert_eq!(on_redis.original.key.as_deref(), Some("42"));
    assert_eq!(
        on_redis.original.headers.get("x-trace-id"),
        Some("trace-abc")
    );
}
