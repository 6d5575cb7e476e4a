//! Idempotent handlers on the memory broker (issue 24): the same idempotency key delivered
//! twice runs the handler once and counts a duplicate; two deliveries of one key at once never
//! run together; a failure frees the key so that the retry runs; a message with no key runs
//! every time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use messaging_core::message::header;
use messaging_core::metrics::metrics;
use messaging_core::testing::TestHarness;
use messaging_core::{
    HandlerError, HandlerSpec, Invocation, OutgoingMessage, RetryPolicy, SendOptions,
};

#[derive(Default)]
struct Calls {
    runs: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

/// A handler counting its runs and how many ran at once; each run takes `takes`.
fn counting(name: &str, topic: &str, calls: &Arc<Calls>, takes: Duration) -> HandlerSpec {
    let calls = Arc::clone(calls);
    HandlerSpec::new(name, [topic], move |_inv: Invocation| {
        let calls = Arc::clone(&calls);
        async move {
            let now = calls.running.fetch_add(1, Ordering::SeqCst) + 1;
            calls.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(takes).await;
            calls.running.fetch_sub(1, Ordering::SeqCst);
            calls.runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .idempotent(true)
}

fn keyed(topic: &str, key: &str, idempotency_key: &str, body: &str) -> OutgoingMessage {
    let mut message = OutgoingMessage::new(topic, body.as_bytes().to_vec())
        .with_header(header::IDEMPOTENCY_KEY, idempotency_key);
    message.key = Some(key.to_owned().into());
    message
}

#[tokio::test(start_paused = true)]
async fn the_same_key_published_twice_runs_once_and_counts_a_duplicate() {
    const TOPIC: &str = "idem.twice";
    let calls = Arc::<Calls>::default();
    let handler = counting("charge", TOPIC, &calls, Duration::ZERO);
    let harness = TestHarness::builder()
        .runtime(|r| r.without_registered().handler(handler))
        .start()
        .await
        .unwrap();
    // Through `SendOptions`, as a publisher retrying after a lost acknowledgement does.
    for _ in 0..2 {
        harness
            .producer()
            .send_with(
                TOPIC,
                &serde_json::json!({"order_id": 7}),
                SendOptions::key("7").idempotency_key("order-7"),
            )
            .await
            .unwrap();
    }
    harness.wait_idle().await;
    assert_eq!(calls.runs.load(Ordering::SeqCst), 1);
    assert_eq!(metrics().duplicates(TOPIC, "charge"), 1);
    assert!(
        metrics()
            .render()
            .contains("messaging_duplicates_total{topic=\"idem.twice\",group=\"charge\"} 1"),
        "{}",
        metrics().render()
    );
    // Another key runs.
    harness
        .send_raw(keyed(TOPIC, "8", "order-8", "{}"))
        .await
        .unwrap();
    harness.wait_idle().await;
    assert_eq!(calls.runs.load(Ordering::SeqCst), 2);
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_envelope_delivered_twice_runs_once_by_its_event_id() {
    const TOPIC: &str = "idem.envelope";
    let calls = Arc::<Calls>::default();
    let handler = counting("audit", TOPIC, &calls, Duration::ZERO);
    let harness = TestHarness::builder()
        .runtime(|r| r.without_registered().handler(handler))
        .start()
        .await
        .unwrap();
    let (_, message) = harness
        .producer()
        .envelope("order.paid", &serde_json::json!({"id": 1}), TOPIC, None)
        .unwrap();
    harness.send_raw(message.clone()).await.unwrap();
    harness.send_raw(message).await.unwrap();
    harness.wait_idle().await;
    assert_eq!(calls.runs.load(Ordering::SeqCst), 1);
    assert_eq!(metrics().duplicates(TOPIC, "audit"), 1);
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn two_deliveries_of_one_key_at_once_never_run_together() {
    const TOPIC: &str = "idem.at-once";
    let calls = Arc::<Calls>::default();
    let handler = counting("ship", TOPIC, &calls, Duration::from_millis(500));
    let harness = TestHarness::builder()
        .runtime(|r| r.without_registered().handler(handler).concurrency(8))
        .start()
        .await
        .unwrap();
    // Different message keys, so that the two are on different lanes at the same time.
    harness
        .send_raw(keyed(TOPIC, "a", "parcel-1", "{}"))
        .await
        .unwrap();
    harness
        .send_raw(keyed(TOPIC, "b", "parcel-1", "{}"))
        .await
        .unwrap();
    harness.wait_idle().await;
    assert_eq!(calls.runs.load(Ordering::SeqCst), 1);
    assert_eq!(calls.most_at_once.load(Ordering::SeqCst), 1);
    assert_eq!(metrics().duplicates(TOPIC, "ship"), 1);
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failure_frees_the_key_so_the_retry_runs() {
    const TOPIC: &str = "idem.retry";
    let attempts = Arc::new(AtomicUsize::new(0));
    let handler = HandlerSpec::new("pay", [TOPIC], {
        let attempts = Arc::clone(&attempts);
        move |_inv: Invocation| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(HandlerError::retryable("card service down"))
                } else {
                    Ok(())
                }
            }
        }
    })
    .retry(RetryPolicy::new(2, Duration::from_secs(1)))
    .idempotent(true);
    let harness = TestHarness::builder()
        .runtime(|r| r.without_registered().handler(handler))
        .start()
        .await
        .unwrap();
    harness
        .send_raw(keyed(TOPIC, "1", "pay-1", "{}"))
        .await
        .unwrap();
    harness.wait_idle().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "the retry ran");
    assert!(harness.dlq(TOPIC).is_empty());
    // Done now: a redelivery is a duplicate.
    harness
        .send_raw(keyed(TOPIC, "1", "pay-1", "{}"))
        .await
        .unwrap();
    harness.wait_idle().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(metrics().duplicates(TOPIC, "pay"), 1);
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_message_without_a_key_runs_every_time() {
    const TOPIC: &str = "idem.no-key";
    let calls = Arc::<Calls>::default();
    let handler = counting("plain", TOPIC, &calls, Duration::ZERO);
    let harness = TestHarness::builder()
        .runtime(|r| r.without_registered().handler(handler))
        .start()
        .await
        .unwrap();
    for _ in 0..2 {
        harness
            .send_raw(OutgoingMessage::new(TOPIC, b"{}".to_vec()))
            .await
            .unwrap();
    }
    harness.wait_idle().await;
    assert_eq!(calls.runs.load(Ordering::SeqCst), 2);
    assert_eq!(metrics().duplicates(TOPIC, "plain"), 0);
    harness.shutdown().await;
}
