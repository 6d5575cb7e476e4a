//! Helpers of the RabbitMQ tests: fresh names, connecting (panicking when RabbitMQ is not
//! there: a broker test fails, it never skips), and closing this test's connections only.

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use messaging_rabbit::{RabbitBroker, RabbitOptions};

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Names no other run uses: topics, groups, connection names.
pub struct Names {
    pub id: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        let uuid = uuid::Uuid::now_v7().simple().to_string();
        Self {
            id: format!("rt-{test}-{}", &uuid[uuid.len() - 10..]),
        }
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.id)
    }

    pub fn group(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    /// The connection name prefix of this test's brokers.
    pub fn connection(&self) -> String {
        format!("messaging-rabbit-test {}", self.id)
    }

    /// Options naming the connections after this test, with quick reconnection and queues
    /// that RabbitMQ drops a while after the test.
    pub fn options(&self) -> RabbitOptions {
        RabbitOptions::new(URL)
            .connection_name(self.connection())
            .reconnect(5, Duration::from_millis(200), Duration::from_secs(2))
            .queue_expires(Duration::from_secs(300))
    }

    pub async fn broker(&self) -> RabbitBroker {
        match RabbitBroker::connect(self.options()).await {
            Ok(broker) => broker,
            Err(error) => panic!(
                "RabbitMQ is not reachable at {URL} (run scripts/start-rabbitmq.sh): {error}"
            ),
        }
    }
}

/// Runs `rabbitmqctl` and returns what it printed; panics when it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl cannot run: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `queue`'s messages ready and delivered-but-unacknowledged, as the broker counts them now;
/// `None` when it has no such queue.
pub fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    rabbitmqctl(&[
        "-q",
        "list_queues",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .lines()
    .find_map(|line| {
        let mut fields = line.split('\t').map(str::trim);
        if fields.next()? != queue {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The pids of the open connections whose client properties contain `fragment`.
pub fn connection_pids(fragment: &str) -> Vec<String> {
    rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .lines()
    .filter(|line| line.contains(fragment))
    .filter_map(|line| line.split('\t').next())
    .map(|pid| pid.trim().to_owned())
    .collect()
}

/// Closes, from the server side, every connection whose client properties contain
/// `fragment` (this test's connection names only: other tests' connections stay open).
/// Returns the pids closed.
pub async fn close_connections(fragment: &str) -> Vec<String> {
    let fragment = fragment.to_owned();
    tokio::task::spawn_blocking(move || {
        let pids = connection_pids(&fragment);
        let closing: Vec<_> = pids
            .iter()
            .map(|pid| {
                Command::new("rabbitmqctl")
                    .args([
                        "-q",
                        "close_connection",
                        pid,
                        "closed by a messaging-rabbit test",
                    ])
                    .spawn()
                    .unwrap_or_else(|e| panic!("rabbitmqctl cannot run: {e}"))
            })
            .collect();
        for mut child in closing {
            let status = child.wait().expect("rabbitmqctl finishes");
            assert!(status.success(), "rabbitmqctl close_connection failed");
        }
        pids
    })
    .await
    .expect("closing connections")
}

/// Waits until `done` holds, panicking with `what` after `patience`.
pub async fn eventually(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
