//! Consumer lag on every broker (issue 26, done-when 1): with the handler stopped while
//! [`BACKLOG`] messages are published, the lag reads the backlog (±1 %) through
//! `Broker::lag`, in `consumer lag --json` (another process) and in `/metrics` of a running
//! consumer whose handler holds; once the handler resumes it drains to 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use messaging_core::health::{self, Health};
use messaging_core::{Broker, HandlerSpec, Invocation, LagRow, OutgoingMessage};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Connect, Scenario, process};

/// Messages published while the handler is stopped.
pub const BACKLOG: u64 = 5_000;

/// How far a reading may be from [`BACKLOG`]: 1 %.
const TOLERANCE: u64 = BACKLOG / 100;

/// How long a reading may take to come right.
const PATIENCE: Duration = Duration::from_secs(60);

/// How to run `consumer lag` as another process: a `consumer` binary whose handler reads
/// `RELIABILITY_TOPIC` (`reliability_consumer`), and the environment selecting the broker.
#[derive(Clone, Copy, Debug)]
pub struct LagCommand<'a> {
    /// The binary.
    pub binary: &'a str,
    /// `MESSAGING_BACKEND` and the broker's address.
    pub env: &'a [(&'a str, &'a str)],
}

/// Waits until `read` gives a value that `done` accepts, panicking with the last one (and
/// `what`) after [`PATIENCE`].
async fn until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut read: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}; last: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn near_backlog(lag: u64) -> bool {
    lag.abs_diff(BACKLOG) <= TOLERANCE
}

/// The summed lag of `rows`.
fn total(rows: &[LagRow]) -> u64 {
    rows.iter().map(|r| r.lag).sum()
}

async fn broker_lag(broker: &dyn Broker, group: &str, topic: &str) -> u64 {
    let rows = broker
        .lag(group, &[topic.to_owned()])
        .await
        .expect("the broker reads the lag");
    total(&rows)
}

/// What `/metrics` at `addr` says of `group`: its summed `messaging_consumer_lag`, and
/// its summed `messaging_consumer_pending` when there are such series.
#[derive(Debug)]
struct Exported {
    lag: Option<u64>,
    pending: Option<u64>,
}

async fn metrics_lag(addr: SocketAddr, group: &str) -> Exported {
    let body = tokio::task::spawn_blocking(move || process::get(addr, "/metrics"))
        .await
        .unwrap()
        .map(|(_, body)| body)
        .unwrap_or_default();
    let label = format!("group=\"{group}\"");
    let sum = |metric: &str| {
        let prefix = format!("{metric}{{");
        let values: Vec<u64> = body
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    Exported {
        lag: sum("messaging_consumer_lag"),
        pending: sum("messaging_consumer_pending"),
    }
}

async fn health_json(addr: SocketAddr) -> serde_json::Value {
    let body = tokio::task::spawn_blocking(move || process::get(addr, "/health"))
        .await
        .unwrap()
        .map(|(_, body)| body)
        .unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_default()
}

/// `consumer lag --group <group> --json` in a process of its own: the summed lag.
fn command_lag(command: LagCommand<'_>, group: &str, topic: &str) -> u64 {
    let log = std::env::temp_dir().join(format!("{group}.log"));
    let log = log.to_string_lossy().into_owned();
    let mut env = command.env.to_vec();
    env.extend([("RELIABILITY_TOPIC", topic), ("RELIABILITY_LOG", &log)]);
    let (status, out, err, _) =
        process::run_plain(command.binary, &["lag", "--group", group, "--json"], &env);
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "consumer lag failed:\n{out}\n{err}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a JSON array ({e}):\n{out}"));
    assert!(
        rows.iter().all(|r| r["group"] == group),
        "only the group asked for:\n{out}"
    );
    rows.iter().filter_map(|r| r["lag"].as_u64()).sum()
}

/// A handler on `topic` in `group` that waits until `open` turns true, then counts.
fn held(
    topic: &str,
    group: &str,
    open: &watch::Receiver<bool>,
    handled: &Arc<AtomicUsize>,
) -> HandlerSpec {
    let (open, handled) = (open.clone(), Arc::clone(handled));
    HandlerSpec::new("held", [topic], move |_: Invocation| {
        let (mut open, handled) = (open.clone(), Arc::clone(&handled));
        async move {
            let _ = open.wait_for(|open| *open).await;
            handled.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    })
    .group(group)
}

/// The test body. `command` is `None` on the memory broker, whose groups live in one
/// process.
pub async fn lag_reads_the_backlog_and_drains(
    connect: Connect,
    command: Option<LagCommand<'static>>,
) {
    let s = Scenario::new(connect);
    let (topic, group) = (s.topic("lag"), s.group("lag"));
    let (gate, open) = watch::channel(false);
    let handled = Arc::new(AtomicUsize::new(0));
    let fast_refresh = |builder: messaging_core::RuntimeBuilder| {
        let mut config = messaging_core::Config::default().with_source("conformance");
        config.lag.interval = Duration::from_millis(200);
        builder.config(config)
    };

    // The group exists (queue declared, stream group created), then its consumer stops.
    let runtime = s
        .start_with(vec![held(&topic, &group, &open, &handled)], fast_refresh)
        .await;
    runtime.shutdown().await.unwrap();

    let broker = s.broker().await;
    let published = Instant::now();
    futures::stream::iter(0..BACKLOG)
        .map(|i| broker.publish(OutgoingMessage::new(topic.clone(), format!("{i}"))))
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await
        .expect("the backlog is published");
    eprintln!("published {BACKLOG} in {:?}", published.elapsed());

    let lag = until(
        "Broker::lag to read the backlog",
        || broker_lag(&*broker, &group, &topic),
        |lag| near_backlog(*lag),
    )
    .await;
    eprintln!("{}: Broker::lag read {lag}", broker.name());
    if let Some(command) = command {
        let (group, topic) = (group.clone(), topic.clone());
        let lag = tokio::task::spawn_blocking(move || command_lag(command, &group, &topic))
            .await
            .unwrap();
        assert!(near_backlog(lag), "consumer lag --json read {lag}");
        eprintln!("{}: consumer lag --json read {lag}", broker.name());
    }

    // The consumer runs again, its handler holding what it fetched: `/metrics` and `/health`.
    let runtime = s
        .start_with(vec![held(&topic, &group, &open, &handled)], fast_refresh)
        .await;
    let addr = process::free_addr();
    let stop_serving = CancellationToken::new();
    let _stop = stop_serving.clone().drop_guard();
    let health = Arc::new(Health {
        backend: runtime.broker().name().to_owned(),
        enabled: true,
        handlers: 1,
        connection: Arc::clone(runtime.connection()),
        stall_after: Duration::from_secs(30),
        lag_alert: 1000,
    });
    let addr = health::serve(addr, health, stop_serving.clone())
        .await
        .unwrap();
    // Part of it delivered and held, where the broker tells (all but Kafka).
    let exported = until(
        "/metrics to read the backlog",
        || metrics_lag(addr, &group),
        |e| e.lag.is_some_and(near_backlog) && e.pending != Some(0),
    )
    .await;
    eprintln!("{}: /metrics read {exported:?}", broker.name());
    assert_eq!(
        exported.pending.is_none(),
        broker.name() == "kafka",
        "pending is exported where the broker tells it"
    );
    let health = health_json(addr).await;
    assert_eq!(health["status"], "lagging", "{health}");
    assert!(
        health["lagging"]
            .as_array()
            .is_some_and(|l| l.iter().any(|g| g
                .as_str()
                .is_some_and(|g| g.starts_with(&format!("{group}/"))))),
        "{health}"
    );
    assert_eq!(health["ready"], true, "lagging is not unready: {health}");

    gate.send_replace(true);
    until(
        "/metrics to read 0",
        || metrics_lag(addr, &group),
        |e| e.lag == Some(0) && e.pending.unwrap_or(0) == 0,
    )
    .await;
    until(
        "Broker::lag to read 0",
        || broker_lag(&*broker, &group, &topic),
        |lag| *lag == 0,
    )
    .await;
    let health = health_json(addr).await;
    assert_eq!(health["status"], "connected", "{health}");
    assert!(handled.load(Ordering::Relaxed) as u64 >= BACKLOG);
    runtime.shutdown().await.unwrap();
    let exported = metrics_lag(addr, &group).await;
    assert!(
        exported.lag.is_none(),
        "a stopped consumer's lag is no longer exported: {exported:?}"
    );
}
