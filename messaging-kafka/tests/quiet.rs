//! While the cluster is down the log stays quiet (each distinct librdkafka message once,
//! then a summary every 30 s), and a member reports the failing fetch for `/health/ready`
//! until the cluster answers again. Uses librdkafka's mock cluster: no broker needed.
//!
//! Run with: cargo test -p messaging-kafka --test quiet

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging_core::{Broker, StartFrom, Subscription};
use messaging_kafka::KafkaBroker;
use rdkafka::mocking::MockCluster;

/// Every line logged, in this test binary (librdkafka calls back on its own threads, so the
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
    fn since(&self, start: usize) -> Vec<String> {
        let all = self.0.lock().unwrap();
        String::from_utf8_lossy(&all[start..])
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

async fn wait_for(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_cluster_logs_few_lines_and_fails_readiness_until_it_is_back() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 3, 1).unwrap();
    let broker = KafkaBroker::connect_with_properties(
        &cluster.bootstrap_servers(),
        [("messaging.topic.replication.factor", "1")],
    )
    .await
    .expect("the mock cluster answers");
    let mut consumer = broker
        .subscribe(Subscription {
            group: "billing".to_owned(),
            topics: vec!["orders".to_owned()],
            start: StartFrom::Earliest,
            prefetch: 16,
        })
        .await
        .expect("subscribed");
    let readiness = consumer.readiness();
    let fetching = tokio::spawn(async move {
        loop {
            // Errors are transient: the member retries by itself.
            let _ = consumer.next_batch(16).await;
        }
    });
    wait_for("the assignment", Duration::from_secs(30), || {
        readiness.is_ready()
    })
    .await;
    assert!(readiness.problems_older_than(Duration::ZERO).is_empty());

    let start = lines.len();
    cluster.broker_down(1).unwrap();
    wait_for(
        "the failing fetch reported",
        Duration::from_secs(30),
        || !readiness.problems_older_than(Duration::ZERO).is_empty(),
    )
    .await;
    // The measured window, not a wait: how many lines a little over one summary period
    // (30 s) of outage produces.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let logged = lines.since(start);
    let from_client = logged.iter().filter(|l| l.contains("librdkafka")).count();
    assert!(
        logged.len() <= 10,
        "{} lines in 35 s while down ({from_client} of the client's):\n{}",
        logged.len(),
        logged.join("\n")
    );
    assert!(
        logged.iter().any(|l| l.contains("suppressed")),
        "a summary of the repeats:\n{}",
        logged.join("\n")
    );
    let problems = readiness.problems_older_than(Duration::from_secs(30));
    assert!(!problems.is_empty(), "the failing fetch has lasted");

    cluster.broker_up(1).unwrap();
    wait_for("the fetch problem cleared", Duration::from_secs(30), || {
        readiness.problems_older_than(Duration::ZERO).is_empty()
    })
    .await;
    fetching.abort();
}
