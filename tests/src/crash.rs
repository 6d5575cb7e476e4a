//! Consumer processes for the crash tests of issue 24 (`tests/tests/crash_after_success.rs`):
//! a consumer binary started with a clean environment, a `/health` address and its output in
//! a file, waited on by condition (its output, `/health/ready`, `/metrics`), SIGKILLed or
//! stopped with SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_addr, get};

/// How long a crash test waits for what should happen (a Kafka group's rebalance after a
/// SIGKILL waits out the dead member's session timeout first).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A consumer process; SIGKILLed if still running when dropped.
#[derive(Debug)]
pub struct ConsumerProcess {
    child: Option<Child>,
    name: String,
    out: PathBuf,
    health: SocketAddr,
}

impl ConsumerProcess {
    /// Starts `binary` with `args`, `--health-addr` and `env` (and no `MESSAGING_*`,
    /// `REDIS_*`, `KAFKA_*` or `RABBITMQ_*` variable of the test's own), its output in
    /// `<dir>/<name>.out`.
    pub fn start(
        binary: &str,
        args: &[&str],
        env: &[(String, String)],
        dir: &Path,
        name: &str,
    ) -> Self {
        let health = free_addr();
        let out_path = dir.join(format!("{name}.out"));
        let out = std::fs::File::create(&out_path).unwrap();
        let mut command = Command::new(binary);
        command
            .args(args)
            .args(["--health-addr", &health.to_string()])
            .env("RUST_LOG", "info");
        for (key, _) in std::env::vars() {
            if ["MESSAGING_", "REDIS_", "KAFKA_", "RABBITMQ_"]
                .iter()
                .any(|prefix| key.starts_with(prefix))
            {
                command.env_remove(key);
            }
        }
        let child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} starts: {e}"));
        Self {
            child: Some(child),
            name: name.to_owned(),
            out: out_path,
            health,
        }
    }

    /// What it wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn output_tail(&self) -> String {
        let text = self.output();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics, showing its output, when it exited.
    pub fn assert_running(&mut self, what: &str) {
        let child = self.child.as_mut().expect("the process is running");
        if let Some(status) = child.try_wait().unwrap() {
            self.child = None;
            panic!(
                "{} exited ({status}) {what}; its output ends with:\n{}",
                self.name,
                self.output_tail()
            );
        }
    }

    /// Whether `GET /health/ready` answers 200: every group consumes.
    pub fn ready(&self) -> bool {
        get(self.health, "/health/ready").is_some_and(|(status, _)| status == 200)
    }

    /// `GET /metrics`, or nothing while it does not answer.
    pub fn metrics(&self) -> String {
        get(self.health, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Waits until `done` holds, checking that the process lives; panics with `what` and its
    /// output after [`PATIENCE`].
    pub async fn until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            self.assert_running(&format!("while waiting for {what}"));
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {PATIENCE:?} waiting for {what}; output:\n{}",
                self.name,
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: nothing acknowledged or committed on the way out.
    pub fn kill(&mut self) {
        self.assert_running("before it was killed");
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits (up to [`PATIENCE`]) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.assert_running("before SIGTERM");
        let child = self.child.as_mut().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {PATIENCE:?} of SIGTERM; output:\n{}",
                self.name,
                self.output_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The lines of the file at `path` (none when it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The value of `messaging_duplicates_total{topic, group}` in a `/metrics` text (0 when it has
/// no such sample).
pub fn duplicates(metrics: &str, topic: &str, group: &str) -> u64 {
    let sample = format!("messaging_duplicates_total{{topic=\"{topic}\",group=\"{group}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&sample))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_duplicate_counter() {
        let text = "# TYPE messaging_duplicates_total counter\n\
                    messaging_duplicates_total{topic=\"t\",group=\"g\"} 2\n\
                    messaging_duplicates_total{topic=\"t2\",group=\"g\"} 5\n";
        assert_eq!(duplicates(text, "t", "g"), 2);
        assert_eq!(duplicates(text, "t", "h"), 0);
    }
}
