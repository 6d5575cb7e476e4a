//! With `metrics-exporter-prometheus` installed (as the `consumer` binary does), `/metrics`
//! is the exporter's rendering. It holds exactly the series, names, labels and values of
//! `metrics().render()` (what `/metrics` served before the facade, and still serves without
//! our exporter), after handling that makes every family show a sample.
//!
//! Run with: cargo test -p messaging-core --features prometheus --test prometheus_exporter

use std::collections::BTreeMap;

use messaging_core::metrics::{install_prometheus, metrics};
use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;

/// Fails on `{"fail": true}`: one retry, then the dead-letter queue.
#[message_handler(topic = "exporter.orders", max_retries = 1, retry_delay = "1s")]
async fn exporter_order(order: serde_json::Value) -> anyhow::Result<()> {
    anyhow::ensure!(order["fail"] != true, "asked to fail");
    Ok(())
}

#[message_handler(topic = "exporter.payments", idempotent)]
async fn exporter_payment(_payment: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

#[derive(Default)]
struct ExporterEvents;

#[consumer(group = "exporter", topics = ["exporter.events"])]
impl ExporterEvents {
    #[on_event("known")]
    async fn known(&self, _event: Event<serde_json::Value>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The samples of a Prometheus text, by series (name and sorted labels).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let series = match series.split_once('{') {
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                }
                None => series.to_owned(),
            };
            (series, value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_exporter_renders_the_same_series_as_before() {
    let handle = install_prometheus().expect("the first recorder of this process");
    let harness = TestHarness::builder().start().await.unwrap();
    let orders = "exporter.orders";
    for fail in [false, true] {
        harness
            .send(orders, &serde_json::json!({ "fail": fail }))
            .await
            .unwrap();
    }
    let events = "exporter.events";
    let data = serde_json::json!({});
    for name in ["known", "unknown"] {
        harness.publish_event(name, &data, events).await.unwrap();
    }
    for _ in 0..2 {
        harness
            .producer()
            .send_with(
                "exporter.payments",
                &serde_json::json!({}),
                messaging_core::SendOptions::default().idempotency_key("p-1"),
            )
            .await
            .unwrap();
    }
    harness.wait_idle().await;
    assert_eq!(harness.dead_lettered("exporter_order"), 1);
    // What the lag refresher records (a Kafka-like row, with a partition and no pending).
    messaging_core::lag::record(
        "exporter-lag",
        &[messaging_core::lag::LagRow {
            group: "exporter-lag".into(),
            topic: orders.into(),
            partition: Some(3),
            lag: 1_234,
            pending: None,
        }],
    );

    let (ours, exported) = (metrics().render(), handle.render());
    harness.shutdown().await;
    let (ours, exported) = (samples(&ours), samples(&exported));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        exported.keys().collect::<Vec<_>>(),
        "the same series\n{ours:#?}\n{exported:#?}"
    );
    for (series, value) in &ours {
        // Sums of seconds: ours adds nanoseconds, the exporter adds floats.
        let close = (value - exported[series]).abs() <= 1e-6 * value.abs().max(1.0);
        assert!(
            close,
            "{series}: {value} here, {} exported",
            exported[series]
        );
    }
    for family in [
        "messaging_handled_total",
        "messaging_end_to_end_seconds_count",
        "messaging_consumer_lag",
        "messaging_skipped_total",
        "messaging_duplicates_total",
        "messaging_published_total",
    ] {
        assert!(
            ours.keys().any(|s| s.starts_with(family)),
            "{family} has a sample"
        );
    }
}
