//! Reliability on RabbitMQ (issue 7): the shared server (127.0.0.1:5672) restarted mid-run.
//! A test binary of its own, since the restart disturbs every client of the server:
//! `rabbitmqctl stop_app` closes every connection and stops the queues, `start_app` recovers
//! the durable queues and their persistent messages from disk. A guard starts the app again
//! even when the test fails. Fails, never skips, when RabbitMQ or `rabbitmqctl` is missing.
//!
//! Run with: cargo test -p messaging-tests --all-features --test reliability_rabbit_restart -- --nocapture

use std::process::Command;
use std::time::{Duration, Instant};

use messaging_rabbit::{RabbitBroker, RabbitOptions};
use messaging_tests::reliability::{self, Backend, Prepare};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BINARY: &str = env!("CARGO_BIN_EXE_reliability_consumer");

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the RabbitMQ application again when dropped, so a failing test leaves it running.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .status();
    }
}

/// `stop_app`, a pause, `start_app`; returns how long the broker was away.
fn restart(away: Duration) -> Duration {
    let started = Instant::now();
    let guard = StartAgain;
    rabbitmqctl(&["stop_app"]);
    std::thread::sleep(away);
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup", "--timeout", "60"]);
    std::mem::forget(guard);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_and_the_consumer_resumes() {
    let options = RabbitOptions::new(URL).connection_name("reliability publisher");
    let publisher = RabbitBroker::connect(options).await.unwrap_or_else(|e| {
        panic!("RabbitMQ is not reachable at {URL} (run scripts/start-rabbitmq.sh): {e}")
    });
    let backend = Backend {
        name: "rabbitmq",
        binary: BINARY,
        env: vec![
            ("MESSAGING_BACKEND".into(), "rabbitmq".into()),
            ("RABBITMQ_URL".into(), URL.into()),
        ],
        publisher: publisher.into_dyn(),
        prepare: Prepare::Subscribe,
        cleanup: reliability::delete_rabbit_queues,
    };
    let report = reliability::broker_restart(&backend, || async {
        tokio::task::spawn_blocking(|| restart(Duration::from_secs(2)))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(report.restarts, 1);
}
