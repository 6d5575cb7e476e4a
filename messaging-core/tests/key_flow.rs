//! One failing key among 50 on the memory broker, in virtual time (issue 22, done-when 2):
//! 2 000 messages, key `k0` failing every attempt with 3 retries 5 s apart. Every message of
//! the other 49 keys is handled within 2 s (of virtual time) of its publish, while `k0`'s 40
//! messages, 15 s of back-off each, reach the DLQ in their order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::testing::TestHarness;
use messaging_core::{HandlerError, HandlerSpec, Invocation, OutgoingMessage, RetryPolicy};
use tokio::time::Instant;

const TOPIC: &str = "key-flow.orders";

#[tokio::test(start_paused = true)]
async fn one_failing_key_holds_back_only_its_own_messages() {
    let started = Instant::now();
    let late: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let handler = HandlerSpec::new("keyed", [TOPIC], {
        let late = Arc::clone(&late);
        move |inv: Invocation| {
            let result = if inv.message.key_str() == Some("k0") {
                Err(HandlerError::retryable("k0 always fails"))
            } else {
                let sent: u64 = String::from_utf8_lossy(&inv.message.payload)
                    .parse()
                    .unwrap();
                let now = started.elapsed().as_millis() as u64;
                late.lock()
                    .unwrap()
                    .push(Duration::from_millis(now.saturating_sub(sent)));
                Ok(())
            };
            async move { result }
        }
    })
    .retry(RetryPolicy::new(3, Duration::from_secs(5)));
    let harness = TestHarness::builder()
        .runtime(|r| r.without_registered().handler(handler).concurrency(16))
        .start()
        .await
        .unwrap();
    for seq in 0..2_000u64 {
        // Publishes spread over 20 s of virtual time: 10 ms apart.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent = started.elapsed().as_millis() as u64;
        let mut message = OutgoingMessage::new(TOPIC, sent.to_string().into_bytes());
        message.key = Some(format!("k{}", seq % 50).into());
        harness.send_raw(message).await.unwrap();
    }
    harness.wait_idle().await;
    let late = late.lock().unwrap().clone();
    assert_eq!(
        late.len(),
        1_960,
        "every message of the 49 healthy keys handled"
    );
    let worst = late.iter().max().unwrap();
    assert!(*worst < Duration::from_secs(2), "one waited {worst:?}");
    let records = harness.dlq(TOPIC);
    assert_eq!(records.len(), 40);
    let sent: Vec<u64> = records
        .iter()
        .map(|r| r.original.payload.parse().unwrap())
        .collect();
    assert!(
        sent.windows(2).all(|w| w[0] < w[1]),
        "k0 in order: {sent:?}"
    );
    assert!(records.iter().all(|r| r.attempts == 4));
    // 40 messages × 15 s of back-off, one after the other.
    assert!(started.elapsed() >= Duration::from_secs(600));
    harness.shutdown().await;
}
