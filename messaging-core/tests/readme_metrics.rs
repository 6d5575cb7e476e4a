//! README.md's `GET /metrics` bullet names exactly the metric families that `/metrics`
//! renders (`metrics().render()`), after handling that makes every family show a sample.

use std::collections::BTreeSet;

use messaging_core::metrics::metrics;
use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;

/// Fails on `{"fail": true}`: one retry, then the dead-letter queue.
#[message_handler(topic = "readme-metrics.orders", max_retries = 1, retry_delay = "1s")]
async fn readme_metrics_order(order: serde_json::Value) -> anyhow::Result<()> {
    anyhow::ensure!(order["fail"] != true, "asked to fail");
    Ok(())
}

/// Idempotent: a second delivery of one idempotency key is counted as a duplicate.
#[message_handler(topic = "readme-metrics.payments", idempotent)]
async fn readme_metrics_payment(_payment: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

/// Answers after a second (virtual): a requester that waits less gets a late reply.
#[message_handler(topic = "readme-metrics.slow")]
async fn readme_metrics_slow(_request: serde_json::Value) -> anyhow::Result<u32> {
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    Ok(1)
}

#[derive(Default)]
struct ReadmeMetricsEvents;

/// Takes `known` only: an `unknown` event is acknowledged and counted as skipped.
#[consumer(group = "readme-metrics", topics = ["readme-metrics.events"])]
impl ReadmeMetricsEvents {
    #[on_event("known")]
    async fn known(&self, _event: Event<serde_json::Value>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The families `text` declares (`# TYPE name kind`); each must have a sample.
fn rendered_families(text: &str) -> BTreeSet<String> {
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    for family in &families {
        let sampled = text.lines().filter(|l| !l.starts_with('#')).any(|l| {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            name == family || base == family
        });
        assert!(
            sampled,
            "`{family}` has no sample; trigger it in this test:\n{text}"
        );
    }
    families
}

/// The `messaging_…` names in README.md's bullet about `GET /metrics`.
fn readme_families() -> BTreeSet<String> {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("- `GET /metrics`")
        .expect("README.md has a bullet starting with `GET /metrics`");
    let bullet = &readme[start..];
    let end = bullet[1..]
        .find("\n- ")
        .map(|i| i + 1)
        .into_iter()
        .chain(bullet.find("\n\n"))
        .min()
        .unwrap_or(bullet.len());
    bullet[..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|code| code.starts_with("messaging_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_readme_lists_exactly_the_rendered_metric_families() {
    let harness = TestHarness::builder().start().await.unwrap();
    let orders = "readme-metrics.orders";
    harness
        .send(orders, &serde_json::json!({"fail": false}))
        .await
        .unwrap();
    harness
        .send(orders, &serde_json::json!({"fail": true}))
        .await
        .unwrap();
    let events = "readme-metrics.events";
    let data = serde_json::json!({});
    harness.publish_event("known", &data, events).await.unwrap();
    harness
        .publish_event("unknown", &data, events)
        .await
        .unwrap();
    let payments = "readme-metrics.payments";
    for _ in 0..2 {
        harness
            .producer()
            .send_with(
                payments,
                &serde_json::json!({}),
                messaging_core::SendOptions::default().idempotency_key("p-1"),
            )
            .await
            .unwrap();
    }
    // A request past its deadline is acknowledged unhandled; a reply nobody waits for any
    // more is dropped.
    let expired = messaging_core::OutgoingMessage::new(orders, b"{}".to_vec())
        .with_header("x-reply-to", "memory.replies.gone")
        .with_header("x-correlation-id", "gone:1")
        .with_header("x-deadline", "2020-01-01T00:00:00Z");
    harness.send_raw(expired).await.unwrap();
    let late_before = metrics().late_replies();
    let impatient = harness
        .producer()
        .request::<u32, _>("readme-metrics.slow", &serde_json::json!({}))
        .timeout(std::time::Duration::from_millis(10))
        .await;
    assert!(impatient.unwrap_err().is_timeout());
    harness.wait_idle().await;
    for _ in 0..100 {
        if metrics().late_replies() > late_before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        metrics().late_replies() > late_before,
        "the late reply was counted"
    );
    assert_eq!(
        metrics().expired_requests(orders, "readme_metrics_order"),
        1
    );
    assert_eq!(harness.dead_lettered("readme_metrics_order"), 1);
    assert_eq!(metrics().duplicates(payments, "readme_metrics_payment"), 1);
    assert_eq!(metrics().skipped(events, "unknown_event"), 1);

    let rendered = rendered_families(&metrics().render());
    let listed = readme_families();
    harness.shutdown().await;
    let missing: Vec<_> = rendered.difference(&listed).collect();
    let absent: Vec<_> = listed.difference(&rendered).collect();
    assert!(
        missing.is_empty() && absent.is_empty(),
        "rendered but not in README.md's `GET /metrics` bullet: {missing:?}; \
         listed there but not rendered: {absent:?}"
    );
}
