//! Consumer lag: how far each group is behind on each topic (and partition), as
//! [`crate::Broker::lag`] reads it, `consumer lag` prints it, `/metrics` exports it and
//! `/health` reports it.
//!
//! One meaning on every broker: `lag` is what the group has not acknowledged yet: the
//! messages waiting for it plus those delivered to a member and not yet acknowledged;
//! `pending` is the second part, where the broker can tell. So a backlog held by a stopped
//! handler reads the same whether or not a consumer prefetched part of it.
//!
//! A running runtime refreshes the gauges of its own groups every `MESSAGING_LAG_INTERVAL`
//! (15 s; `0` turns it off) in a task of its own. They live here, not in
//! [`crate::metrics`]: each reading is also set through the `metrics` facade (for the
//! process's recorder: the `consumer` binary's exporter, or a service's own), and
//! [`crate::metrics::Metrics::render`] calls [`render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::error::{BrokerError, Error};
use crate::registry::HandlerSpec;

/// How far one group is behind on one topic, or one partition of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LagRow {
    /// The consumer group.
    pub group: String,
    /// The topic. RabbitMQ keeps one queue per group for all its topics, so there the row
    /// covers them all and this is their names joined by `,`.
    pub topic: String,
    /// The partition, on brokers that have them (Kafka).
    pub partition: Option<i32>,
    /// Messages the group has not acknowledged yet: waiting, plus delivered and pending.
    pub lag: u64,
    /// Of those, the ones delivered to a member and not yet acknowledged; `None` where the
    /// broker cannot tell (Kafka; RabbitMQ when members run in other processes).
    pub pending: Option<u64>,
}

/// The lag settings (`MESSAGING_LAG_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LagConfig {
    /// How often a running consumer reads its groups' lag for `/metrics` and `/health`
    /// (`MESSAGING_LAG_INTERVAL`); zero turns it off.
    pub interval: Duration,
    /// `/health` lists a group, topic and partition as lagging above this many messages
    /// (`MESSAGING_LAG_ALERT`).
    pub alert: u64,
}

impl Default for LagConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            alert: 1000,
        }
    }
}

impl LagConfig {
    /// Reads `MESSAGING_LAG_INTERVAL` and `MESSAGING_LAG_ALERT` through `get` (a variable's
    /// value, `None` when unset or blank).
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut c = Self::default();
        if let Some(v) = get("MESSAGING_LAG_INTERVAL") {
            c.interval = crate::config::parse_duration("MESSAGING_LAG_INTERVAL", &v)?;
        }
        if let Some(v) = get("MESSAGING_LAG_ALERT") {
            c.alert = v.trim().parse().map_err(|_| Error::Config {
                key: "MESSAGING_LAG_ALERT".to_owned(),
                message: format!("`{v}` is not a non-negative whole number"),
            })?;
        }
        Ok(c)
    }
}

/// Each group of `handlers` with the topics it reads (its delay topics too), as the runtime
/// subscribes them.
pub fn group_topics(handlers: &[HandlerSpec]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in handlers {
        let topics = groups.entry(h.group_name().to_owned()).or_default();
        for topic in h.topics() {
            for t in std::iter::once(topic.clone()).chain(h.delay_topics(topic)) {
                if !topics.contains(&t) {
                    topics.push(t);
                }
            }
        }
    }
    groups
}

/// The `consumer lag` table: GROUP TOPIC PARTITION LAG PENDING, `-` where there is none.
pub fn table(rows: &[LagRow]) -> String {
    let mut cells = vec![["GROUP", "TOPIC", "PARTITION", "LAG", "PENDING"].map(str::to_owned)];
    for r in rows {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        cells.push([
            r.group.clone(),
            r.topic.clone(),
            dash(r.partition.map(|p| p.to_string())),
            r.lag.to_string(),
            dash(r.pending.map(|p| p.to_string())),
        ]);
    }
    crate::table::aligned(&cells)
}

/// What the gauges hold per group, topic and partition: (lag, pending).
type Gauges = BTreeMap<(String, String, Option<i32>), (u64, Option<u64>)>;

fn gauges() -> std::sync::MutexGuard<'static, Gauges> {
    static GAUGES: Mutex<Gauges> = Mutex::new(BTreeMap::new());
    GAUGES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Replaces what the gauges say of `group` with `rows` (a partition that is gone goes too).
pub fn record(group: &str, rows: &[LagRow]) {
    let mut gauges = gauges();
    let gone = take_group(&mut gauges, group);
    for r in rows.iter().filter(|r| r.group == group) {
        let key = (r.group.clone(), r.topic.clone(), r.partition);
        export(&key, r.lag, r.pending);
        gauges.insert(key, (r.lag, r.pending));
    }
    for (key, pending) in gone {
        if !gauges.contains_key(&key) {
            export(&key, 0, pending.map(|_| 0));
        }
    }
}

/// Drops the gauges of `group` (its consumer stopped).
pub fn forget(group: &str) {
    for (key, pending) in take_group(&mut gauges(), group) {
        export(&key, 0, pending.map(|_| 0));
    }
}

type GaugeKey = (String, String, Option<i32>);

/// Takes the rows of `group` out of `gauges`: their keys and pending counts.
fn take_group(gauges: &mut Gauges, group: &str) -> Vec<(GaugeKey, Option<u64>)> {
    let keys: Vec<GaugeKey> = gauges
        .keys()
        .filter(|(g, _, _)| g == group)
        .cloned()
        .collect();
    keys.into_iter()
        .filter_map(|key| gauges.remove(&key).map(|(_, pending)| (key, pending)))
        .collect()
}

/// Sets the facade's gauges of one row, looked up each time (a reading comes every
/// `MESSAGING_LAG_INTERVAL`, and may come before a recorder is installed). The facade cannot
/// drop a series, so a row that is gone is exported as 0, not left at its last value.
fn export((group, topic, partition): &GaugeKey, lag: u64, pending: Option<u64>) {
    use crate::metrics::names;
    let labels = || {
        [
            ("group", group.clone()),
            ("topic", topic.clone()),
            (
                "partition",
                partition.map(|p| p.to_string()).unwrap_or_default(),
            ),
        ]
    };
    ::metrics::gauge!(names::CONSUMER_LAG, &labels()).set(lag as f64);
    if let Some(pending) = pending {
        ::metrics::gauge!(names::CONSUMER_PENDING, &labels()).set(pending as f64);
    }
}

/// What the gauges hold, by group, topic and partition.
pub fn current() -> Vec<LagRow> {
    gauges()
        .iter()
        .map(|((group, topic, partition), (lag, pending))| LagRow {
            group: group.clone(),
            topic: topic.clone(),
            partition: *partition,
            lag: *lag,
            pending: *pending,
        })
        .collect()
}

/// The gauges' rows whose lag is above `threshold`.
pub fn lagging(threshold: u64) -> Vec<LagRow> {
    let mut rows = current();
    rows.retain(|r| r.lag > threshold);
    rows
}

/// Appends `messaging_consumer_lag` and `messaging_consumer_pending` to a Prometheus text
/// exposition. A row without partitions has `partition=""` (the same as no label to
/// Prometheus); one whose pending count is unknown has no pending sample.
pub fn render(out: &mut String) {
    let gauges = gauges();
    let labels = |(group, topic, partition): &(String, String, Option<i32>)| {
        format!(
            "group=\"{}\",topic=\"{}\",partition=\"{}\"",
            esc(group),
            esc(topic),
            partition.map(|p| p.to_string()).unwrap_or_default()
        )
    };
    let _ = writeln!(out, "# TYPE messaging_consumer_lag gauge");
    for (key, (lag, _)) in gauges.iter() {
        let _ = writeln!(out, "messaging_consumer_lag{{{}}} {lag}", labels(key));
    }
    let _ = writeln!(out, "# TYPE messaging_consumer_pending gauge");
    for (key, (_, pending)) in gauges.iter() {
        if let Some(pending) = pending {
            let _ = writeln!(
                out,
                "messaging_consumer_pending{{{}}} {pending}",
                labels(key)
            );
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reads the lag of `groups` (each with its topics) every `every` into the gauges until
/// `shutdown`, then drops their gauges. Ends at once when `every` is zero, and when the
/// broker cannot tell lag (the `disabled` backend). A read that fails keeps the last values
/// (the broker's own health is on `/health`) and is logged once until one succeeds again.
pub(crate) async fn refresh(
    broker: Arc<dyn Broker>,
    groups: Vec<(String, Vec<String>)>,
    every: Duration,
    shutdown: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    let mut failing = false;
    'refresh: loop {
        for (group, topics) in &groups {
            let read = tokio::select! {
                _ = shutdown.cancelled() => break 'refresh,
                read = tokio::time::timeout(every.max(Duration::from_secs(10)), broker.lag(group, topics)) => read,
            };
            match read {
                Ok(Ok(rows)) => {
                    record(group, &rows);
                    if std::mem::take(&mut failing) {
                        tracing::info!(%group, "reading consumer lag works again");
                    }
                }
                Ok(Err(BrokerError::Unsupported { .. })) => {
                    tracing::debug!(
                        backend = broker.name(),
                        "the broker cannot tell consumer lag"
                    );
                    return;
                }
                Ok(Err(error)) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%group, %error, "cannot read consumer lag; keeping the last values");
                    }
                }
                Err(_) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%group, "reading consumer lag timed out; keeping the last values");
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    for (group, _) in &groups {
        forget(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str, topic: &str, partition: Option<i32>, lag: u64) -> LagRow {
        LagRow {
            group: group.into(),
            topic: topic.into(),
            partition,
            lag,
            pending: partition.is_none().then_some(3),
        }
    }

    #[test]
    fn gauges_render_per_group_topic_and_partition_and_are_replaced_per_group() {
        record(
            "lag-unit-a",
            &[
                row("lag-unit-a", "t", Some(0), 5),
                row("lag-unit-a", "t", Some(1), 2000),
            ],
        );
        record("lag-unit-b", &[row("lag-unit-b", "q\"x", None, 7)]);
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains(
                "messaging_consumer_lag{group=\"lag-unit-a\",topic=\"t\",partition=\"1\"} 2000\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "messaging_consumer_lag{group=\"lag-unit-b\",topic=\"q\\\"x\",partition=\"\"} 7\n"
            ),
            "{out}"
        );
        assert!(out.contains("messaging_consumer_pending{group=\"lag-unit-b\",topic=\"q\\\"x\",partition=\"\"} 3\n"), "{out}");
        assert!(
            !out.contains("messaging_consumer_pending{group=\"lag-unit-a\""),
            "{out}"
        );
        assert!(
            lagging(1000)
                .iter()
                .any(|r| r.group == "lag-unit-a" && r.partition == Some(1))
        );
        // A new reading replaces the group's rows: partition 1 is gone.
        record("lag-unit-a", &[row("lag-unit-a", "t", Some(0), 0)]);
        assert!(!lagging(1000).iter().any(|r| r.group == "lag-unit-a"));
        forget("lag-unit-a");
        forget("lag-unit-b");
        assert!(!current().iter().any(|r| r.group.starts_with("lag-unit-")));
    }

    #[test]
    fn readings_go_through_the_metrics_facade_and_a_row_gone_reads_zero() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            record(
                "lag-facade",
                &[
                    row("lag-facade", "t", Some(0), 7),
                    row("lag-facade", "t", Some(1), 9),
                ],
            );
            record("lag-facade", &[row("lag-facade", "t", Some(0), 8)]);
        });
        forget("lag-facade");
        let gauges: BTreeMap<String, f64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let labels: Vec<String> = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                match value {
                    DebugValue::Gauge(v) => {
                        Some((format!("{} {}", key.key().name(), labels.join(",")), v.0))
                    }
                    _ => None,
                }
            })
            .collect();
        let lag = |partition: u8| {
            gauges
                [&format!("messaging_consumer_lag group=lag-facade,topic=t,partition={partition}")]
        };
        assert_eq!((lag(0), lag(1)), (8.0, 0.0), "{gauges:?}");
        // Kafka tells no pending count: none is exported, even as 0.
        assert!(
            !gauges
                .keys()
                .any(|k| k.starts_with("messaging_consumer_pending"))
        );
    }

    #[test]
    fn the_table_has_a_dash_where_a_broker_has_no_value() {
        let table = table(&[
            row("billing", "orders", None, 12),
            row("billing", "payments", Some(3), 4),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "GROUP    TOPIC     PARTITION  LAG  PENDING");
        assert_eq!(lines[1], "billing  orders    -          12   3");
        assert_eq!(lines[2], "billing  payments  3          4    -");
    }

    #[test]
    fn settings_are_read_and_checked() {
        let c = LagConfig::from_lookup(|_| None).unwrap();
        assert_eq!(c, LagConfig::default());
        let c = LagConfig::from_lookup(|k| match k {
            "MESSAGING_LAG_INTERVAL" => Some("2s".into()),
            "MESSAGING_LAG_ALERT" => Some("50".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((c.interval, c.alert), (Duration::from_secs(2), 50));
        let bad = LagConfig::from_lookup(|k| (k == "MESSAGING_LAG_ALERT").then(|| "lots".into()));
        assert!(bad.unwrap_err().to_string().contains("MESSAGING_LAG_ALERT"));
    }

    #[test]
    fn groups_read_their_handlers_topics_and_delay_topics() {
        let noop = |_| async { Ok::<(), crate::HandlerError>(()) };
        let handlers = [
            HandlerSpec::new("a", ["orders"], noop).group("billing"),
            HandlerSpec::new("b", ["orders", "refunds"], noop)
                .group("billing")
                .retry(crate::RetryPolicy {
                    max_retries: 2,
                    ..crate::RetryPolicy::default()
                })
                .retry_topics(true),
            HandlerSpec::new("c", ["orders"], noop).group("audit"),
        ];
        let groups = group_topics(&handlers);
        assert_eq!(groups["audit"], ["orders"]);
        assert_eq!(
            groups["billing"],
            [
                "orders",
                "orders.retry.1",
                "orders.retry.2",
                "refunds",
                "refunds.retry.1",
                "refunds.retry.2"
            ]
        );
    }
}
