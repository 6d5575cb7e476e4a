//! The operations files of `deploy/` against a real Prometheus (issue 26, done-when 2):
//! `promtool` accepts the rules and the configuration; a Prometheus server scrapes a running
//! consumer (the fixture consumer on Redis), its query API returns our series, every query of
//! the Grafana dashboard runs, and the lag alert fires while a backlog stands.
//!
//! What differs from a deployment, so that the test takes seconds: the consumer reads its lag
//! every second (`MESSAGING_LAG_INTERVAL=1s`), its Prometheus scrapes every second and
//! evaluates the rules every second, and its copy of `alerts.yml` has every `for:` shortened
//! to 5 s (the expressions are the deployed ones).
//!
//! Needs Redis on 127.0.0.1:6379 (`scripts/start-redis.sh`) and Debian's `prometheus`
//! package (`scripts/install-prometheus.sh`); fails, never skips, without them.
//!
//! Run with: cargo test -p messaging-tests --features redis --test prometheus

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use messaging_core::{Broker, OutgoingMessage};
use messaging_redis::RedisBroker;
use messaging_tests::process::{free_addr, get};
use serde_json::Value;

const REDIS: &str = "redis://127.0.0.1:6379/0";
const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture_consumer");
/// Above the lag alert's threshold (1 000).
const BACKLOG: usize = 1_500;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (install it with scripts/install-prometheus.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_and_the_configuration() {
    let rules = deploy("prometheus/alerts.yml");
    let text = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(text.contains("SUCCESS: 4 rules found"), "{text}");
    let config = deploy("prometheus/prometheus.yml");
    promtool(&["check", "config", config.to_str().unwrap()]);
}

/// A child process, killed when the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fixture consumer on Redis serving `/metrics`, and a Prometheus scraping it.
struct Scraped {
    prefix: String,
    dir: PathBuf,
    consumer: SocketAddr,
    prometheus: SocketAddr,
    processes: Vec<Killed>,
}

impl Drop for Scraped {
    /// Stops both processes, then removes their files (Prometheus's data included); a
    /// failure's message has already quoted their output.
    fn drop(&mut self) {
        self.processes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Scraped {
    /// Starts the consumer on `<prefix>.record` and `<prefix>.slow` (one handler at a time;
    /// `slow` holds its first message for ten minutes, so what follows it waits), waits for
    /// its `/metrics`, then starts Prometheus on it.
    async fn start() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let prefix = format!("prom-{}", &id[id.len() - 12..]);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let consumer = free_addr();
        let out = std::fs::File::create(dir.join("consumer.out")).unwrap();
        let child = Command::new(FIXTURE)
            .args([
                "--health-addr",
                &consumer.to_string(),
                "--topic",
                &format!("{prefix}.record"),
                "--topic",
                &format!("{prefix}.slow"),
                "--concurrency",
                "1",
                "--from-beginning",
            ])
            .env("MESSAGING_BACKEND", "redis")
            .env("REDIS_URL", REDIS)
            .env("FIXTURE_PREFIX", &prefix)
            .env("FIXTURE_LOG", dir.join("handled.log"))
            .env("FIXTURE_SLOW_MS", "600000")
            // The lag gauges are read every second, not every 15 s.
            .env("MESSAGING_LAG_INTERVAL", "1s")
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("the fixture consumer starts");
        let mut processes = vec![Killed(child)];
        eventually("the consumer's /metrics", Duration::from_secs(30), || {
            get(consumer, "/metrics").is_some_and(|(status, _)| status == 200)
        })
        .await;

        let prometheus = free_addr();
        let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
        let shortened = rules
            .replace("for: 5m", "for: 5s")
            .replace("for: 1m", "for: 5s");
        assert!(
            shortened != rules && !shortened.contains("for: 5m"),
            "the rules' `for:` clauses are not where this test shortens them"
        );
        std::fs::write(dir.join("alerts.yml"), shortened).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - alerts.yml\n\
                 scrape_configs:\n  - job_name: messaging-consumer\n    \
                 static_configs:\n      - targets: [\"{consumer}\"]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.out")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts (install it with scripts/install-prometheus.sh)");
        processes.push(Killed(child));
        let scraped = Self {
            prefix,
            dir,
            consumer,
            prometheus,
            processes,
        };
        eventually("Prometheus ready", Duration::from_secs(60), || {
            get(prometheus, "/-/ready").is_some_and(|(status, _)| status == 200)
        })
        .await;
        scraped
    }

    fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    async fn publish(&self, name: &str, count: usize) {
        let broker = RedisBroker::connect_url(REDIS).await.unwrap_or_else(|e| {
            panic!("Redis is not reachable at {REDIS} (run scripts/start-redis.sh): {e}")
        });
        for n in 0..count {
            broker
                .publish(OutgoingMessage::new(
                    self.topic(name),
                    n.to_string().into_bytes(),
                ))
                .await
                .unwrap();
        }
    }

    /// `GET /api/v1/<path>` of the Prometheus server; its `data`.
    fn api(&self, path: &str) -> Value {
        let body = http_get(self.prometheus, &format!("/api/v1/{path}"))
            .unwrap_or_else(|| panic!("Prometheus answers /api/v1/{path}"));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/v1/{path} is JSON ({e}): {body}"));
        assert_eq!(answer["status"], "success", "/api/v1/{path}: {answer}");
        answer["data"].clone()
    }

    /// The instant vector of `promql`: each series' labels and value.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("query?query={}", encode(promql)));
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: not a vector: {data}"))
            .iter()
            .map(|series| {
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// The states of the alerts named `name` whose labels include `labels`.
    fn alert_states(&self, name: &str, labels: &[(&str, &str)]) -> Vec<String> {
        self.api("alerts")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|alert| {
                alert["labels"]["alertname"] == name
                    && labels.iter().all(|(k, v)| alert["labels"][k] == *v)
            })
            .map(|alert| alert["state"].as_str().unwrap().to_owned())
            .collect()
    }

    /// What the consumer and Prometheus printed, for a failure's message.
    fn logs(&self) -> String {
        let read = |file: &str| std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        format!(
            "consumer:\n{}\nprometheus (last lines):\n{}\n/metrics:\n{}",
            read("consumer.out"),
            read("prometheus.out")
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n"),
            get(self.consumer, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default()
        )
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_consumer_and_runs_the_dashboard_queries() {
    let s = Scraped::start().await;
    s.publish("record", 1).await;
    let handled = format!(
        "messaging_handled_total{{topic=\"{}\",outcome=\"ok\"}}",
        s.topic("record")
    );
    eventually_or(
        &s,
        "the handled message in Prometheus",
        Duration::from_secs(60),
        || s.query(&handled).first().is_some_and(|(_, v)| *v == 1.0),
    )
    .await;
    let up = s.query("up{job=\"messaging-consumer\"}");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0);
    assert!(
        s.alert_states("MessagingConsumerDown", &[]).is_empty(),
        "no consumer is down"
    );

    // Every panel's queries run (Grafana's `$__rate_interval` given a value).
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/messaging-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().clone())
        .map(|target| {
            target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
        })
        .collect();
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        s.query(expr);
    }
    // A panel of our series has data once two scrapes saw it (a rate needs two samples).
    let rate = "sum by (topic, handler, outcome) (rate(messaging_handled_total[1m]))";
    eventually_or(
        &s,
        "handled by outcome with data",
        Duration::from_secs(30),
        || !s.query(rate).is_empty(),
    )
    .await;
}

#[tokio::test]
async fn the_lag_alert_fires_while_a_backlog_stands() {
    let s = Scraped::start().await;
    // The first message holds the one handler for ten minutes: the rest wait.
    s.publish("slow", BACKLOG).await;
    let slow = s.topic("slow");
    let lag = format!("sum by (group, topic) (messaging_consumer_lag{{topic=\"{slow}\"}})");
    eventually_or(
        &s,
        "messaging_consumer_lag above 1000 in Prometheus",
        Duration::from_secs(90),
        || s.query(&lag).first().is_some_and(|(_, v)| *v > 1_000.0),
    )
    .await;
    eventually_or(
        &s,
        "MessagingConsumerLagHigh firing",
        Duration::from_secs(60),
        || {
            s.alert_states("MessagingConsumerLagHigh", &[("topic", &slow)])
                .iter()
                .any(|state| state == "firing")
        },
    )
    .await;
    // One series per group and topic here (Redis has no partitions: its `partition=""` is no
    // label to Prometheus), holding the whole backlog.
    let series = s.query(&format!("messaging_consumer_lag{{topic=\"{slow}\"}}"));
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(series[0].0["group"].is_string(), "{series:?}");
    assert_eq!(series[0].1, BACKLOG as f64, "{series:?}");
}

async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`eventually`], with the processes' output in the failure.
async fn eventually_or(s: &Scraped, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.1 GET that reads a chunked body too (Prometheus sends larger answers so);
/// the body of a 200, else `None`.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    if !chunked {
        return Some(body.to_owned());
    }
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}
