//! A handler that takes 30 s on one message, with `max.poll.interval.ms=10000` (issue 22,
//! done-when 3): the member keeps polling, so it is not taken out of its group (no "maximum
//! poll interval" in the log, no rebalance); the slow key's partition, holding more
//! unsettled messages than its window, is paused, while the other partitions keep flowing;
//! and no message is handled twice.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test flow

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BOOTSTRAP, Log, committed, eventually, eventually_async, producer, start, unique};
use messaging_core::{HandlerSpec, Invocation, Position, SendOptions};
use messaging_kafka::KafkaBroker;
use serde_json::json;

/// Every line logged in this test binary (librdkafka logs from its own threads, so the
/// subscriber is the global one).
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Messages of the slow key: the first takes [`SLOW`], and the others wait behind it, more
/// than a partition may hold unsettled (twice the runtime's batch of 256).
const BEHIND_SLOW: u64 = 1_200;
const SLOW: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct Handled {
    n: u64,
    partition: i32,
    at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_s_handler_neither_evicts_the_member_nor_stops_the_other_partitions() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .init();
    let broker = KafkaBroker::connect_with_properties(
        BOOTSTRAP,
        [
            ("session.timeout.ms", "6000"),
            ("auto.commit.interval.ms", "200"),
            ("max.poll.interval.ms", "10000"),
            ("messaging.topic.replication.factor", "1"),
            ("messaging.topic.partitions", "3"),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("Kafka is not reachable at {BOOTSTRAP}: {e}"));
    let topic = unique("flow");
    let group = unique("flow");
    let producer = producer(&broker);
    // The slow key first: message 0 takes 30 s, the rest of its key waits behind it.
    let bodies: Vec<serde_json::Value> = (0..=BEHIND_SLOW).map(|n| json!({"n": n})).collect();
    let publishes = bodies
        .iter()
        .map(|body| producer.send_with(&topic, body, SendOptions::key("slow".to_owned())));
    for outcome in futures::future::join_all(publishes).await {
        outcome.expect("published");
    }

    let handled: Log<Handled> = Log::default();
    let slow_started: Arc<Mutex<Option<(Instant, i32)>>> = Arc::default();
    let handler = HandlerSpec::new("flow", [topic.clone()], {
        let (handled, slow_started) = (handled.clone(), Arc::clone(&slow_started));
        move |inv: Invocation| {
            let (handled, slow_started) = (handled.clone(), Arc::clone(&slow_started));
            async move {
                let body: serde_json::Value = serde_json::from_slice(&inv.message.payload)?;
                let n = body["n"].as_u64().expect("a number");
                let Position::Partition { partition, .. } = inv.message.position else {
                    panic!("not a Kafka position");
                };
                if n == 0 {
                    *slow_started.lock().unwrap() = Some((Instant::now(), partition));
                    tokio::time::sleep(SLOW).await;
                }
                handled.push(Handled {
                    n,
                    partition,
                    at: Instant::now(),
                });
                Ok(())
            }
        }
    })
    .group(group.clone());
    let runtime = start(&broker, vec![handler], 8).await;
    eventually("the slow message started", Duration::from_secs(30), || {
        slow_started.lock().unwrap().is_some()
    })
    .await;
    let (started, slow_partition) = slow_started.lock().unwrap().expect("started");

    // While it runs (and past the poll interval), other keys are published every 200 ms.
    let mut published: HashMap<u64, Instant> = HashMap::new();
    let mut n = 10_000;
    while started.elapsed() < SLOW - Duration::from_secs(3) {
        producer
            .send_with(&topic, &json!({"n": n}), SendOptions::key(format!("k{n}")))
            .await
            .expect("published");
        published.insert(n, Instant::now());
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = BEHIND_SLOW as usize + 1 + published.len();
    eventually("every message handled", Duration::from_secs(60), || {
        handled.len() >= total
    })
    .await;
    // A second delivery, if any, is handled before the group's commits reach the end of the
    // three partitions (a fresh topic: the committed offsets add up to the messages read). An
    // eviction would have come 10 s into the 30 s handler, long before.
    eventually_async(
        "the group's commits to cover every message",
        Duration::from_secs(60),
        || async {
            let now = committed(&group, &topic, 3).await;
            now.iter().map(|o| o.unwrap_or(0)).sum::<i64>() == total as i64
        },
    )
    .await;
    // What was logged before the shutdown (which revokes the partitions as the member leaves).
    let log = lines.all();
    runtime.shutdown().await.unwrap();

    let all = handled.all();
    let mut times: HashMap<u64, usize> = HashMap::new();
    for h in &all {
        *times.entry(h.n).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, t)| **t > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(times.len(), total, "every message handled");

    // The other partitions kept flowing while message 0 was handled.
    let mut others = 0;
    for h in all.iter().filter(|h| h.n >= 10_000) {
        if h.partition == slow_partition {
            continue;
        }
        others += 1;
        let waited = h.at.duration_since(published[&h.n]);
        assert!(
            waited < Duration::from_secs(3),
            "message {} of partition {} waited {waited:?}",
            h.n,
            h.partition
        );
    }
    assert!(others > 20, "only {others} messages of other partitions");

    let of_group = |what: &str| {
        log.iter()
            .filter(|l| l.contains(what) && l.contains(&group))
            .count()
    };
    let evicted: Vec<&String> = log
        .iter()
        .filter(|l| l.to_lowercase().contains("maximum poll interval"))
        .collect();
    assert!(evicted.is_empty(), "evicted: {evicted:?}");
    assert_eq!(of_group("consuming"), 1, "assigned once");
    assert_eq!(of_group("partitions revoked"), 0, "no rebalance");
    assert_eq!(of_group("partitions assigned"), 0, "no rebalance");
    assert!(
        of_group("paused: too many messages unsettled") >= 1,
        "the slow key's partition was paused"
    );
    assert!(of_group("resumed") >= 1, "and resumed once drained");
}
