//! Reliability on Redis Streams (issue 7): consumer crashes and horizontal scale on the shared
//! Redis (127.0.0.1:6379, `scripts/start-redis.sh`), and a broker restart on a `redis-server`
//! of the test's own (append-only file on, fsync on every write) killed and started again
//! mid-run. Consumers reclaim a dead consumer's pending entries after 2 s
//! (`?reclaim_idle=2s`). Fails, never skips, when Redis or `redis-server` is missing.
//!
//! Run with: cargo test -p messaging-tests --all-features --test reliability_redis -- --nocapture
//! (`MESSAGING_LONG_TESTS=1` for 100 000 messages).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging_redis::RedisBroker;
use messaging_tests::reliability::{self, Backend, Prepare};

const SHARED: &str = "redis://127.0.0.1:6379/0";
const BINARY: &str = env!("CARGO_BIN_EXE_reliability_consumer");

async fn backend(url: &str, cleanup: fn(&str, &str)) -> Backend {
    let publisher = RedisBroker::connect_url(url).await.unwrap_or_else(|e| {
        panic!("Redis is not reachable at {url} (run scripts/start-redis.sh): {e}")
    });
    Backend {
        name: "redis",
        binary: BINARY,
        env: vec![
            ("MESSAGING_BACKEND".into(), "redis".into()),
            ("REDIS_URL".into(), format!("{url}?reclaim_idle=2s")),
        ],
        publisher: publisher.into_dyn(),
        prepare: Prepare::Nothing,
        cleanup,
    }
}

/// Deletes the run's streams from the shared Redis.
fn delete_streams(topic: &str, _group: &str) {
    let _ = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "DEL",
            topic,
            &format!("{topic}.dlq"),
        ])
        .stdout(Stdio::null())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_three_sigkills_lose_nothing() {
    let backend = backend(SHARED, delete_streams).await;
    reliability::crash(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_share_and_survive_losing_one() {
    let backend = backend(SHARED, delete_streams).await;
    reliability::scale(&backend).await;
}

/// A `redis-server` of the test's own on a free port, persisting every write to its
/// append-only file, that can be killed and started again on the same port and directory.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("rel-redis-{}", &id[id.len() - 10..]));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("the redis-server binary runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL (a crash, not a shutdown), a pause of `away`, and the same server again: what
    /// it had acknowledged comes back from the append-only file.
    fn crash_and_restart(&mut self, away: Duration) -> Duration {
        let started = Instant::now();
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(away);
        self.spawn();
        started.elapsed()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_and_restart_loses_nothing_and_the_consumer_resumes() {
    let redis = Arc::new(Mutex::new(OwnRedis::start()));
    let url = redis.lock().unwrap().url();
    let backend = backend(&url, |_, _| {}).await;
    let report = reliability::broker_restart(&backend, || async {
        let redis = Arc::clone(&redis);
        tokio::task::spawn_blocking(move || {
            redis
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
