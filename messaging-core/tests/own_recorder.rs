//! A service that installs its own `metrics` recorder before starting the runtime finds our
//! metrics in it (issue 26, done-when 4): `messaging_handled_total` with its labels, the
//! publish counter and both histograms.

use messaging_core::metrics::names;
use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const TOPIC: &str = "own-recorder.orders";

#[message_handler(topic = "own-recorder.orders")]
async fn own_recorder_order(_order: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

#[tokio::test]
async fn a_service_recorder_sees_messaging_handled_total() {
    // What a service does first thing in `main`, with whatever recorder it exports through.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the first recorder of this process");

    let harness = TestHarness::builder().start().await.unwrap();
    harness
        .publish_event("order.created", &serde_json::json!({"id": 1}), TOPIC)
        .await
        .unwrap();
    harness.wait_idle().await;
    harness.shutdown().await;

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                key.kind() == kind
                    && key.key().name() == name
                    && labels.iter().all(|(k, v)| {
                        key.key()
                            .labels()
                            .any(|label| label.key() == *k && label.value() == *v)
                    })
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in the recorder: {snapshot:#?}"))
    };
    let handler = [
        ("topic", TOPIC),
        ("handler", "own_recorder::own_recorder_order"),
    ];
    let handled = find(
        MetricKind::Counter,
        names::HANDLED,
        &[handler[0], handler[1], ("outcome", "ok")],
    );
    assert_eq!(handled, &DebugValue::Counter(1));
    assert_eq!(
        find(
            MetricKind::Counter,
            names::PUBLISHED,
            &[("backend", "memory"), ("event", "order.created")]
        ),
        &DebugValue::Counter(1)
    );
    for histogram in [names::HANDLER_DURATION, names::END_TO_END] {
        match find(MetricKind::Histogram, histogram, &handler) {
            DebugValue::Histogram(samples) => assert_eq!(samples.len(), 1, "{histogram}"),
            other => panic!("{histogram} is {other:?}"),
        }
    }
}
