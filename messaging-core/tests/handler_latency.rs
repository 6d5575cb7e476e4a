//! The handler latency histogram times each attempt alone: a handler that waits is timed
//! with its wait, and neither a retry's back-off nor the message before it counts in the
//! next message's time (a lane reads the clock once per message and starts the next
//! attempt from there).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use messaging_core::metrics::metrics;
use messaging_core::{
    Config, HandlerError, HandlerSpec, MemoryBroker, OutgoingMessage, RetryPolicy, Runtime,
};

const TOPIC: &str = "handler-latency.steps";
const HANDLER: &str = "latency_per_attempt";

/// The cumulative count of the histogram's bucket `le` (or `+Inf`) for [`HANDLER`].
fn bucket(text: &str, le: &str) -> u64 {
    let wanted = format!("le=\"{le}\"}}");
    text.lines()
        .find(|l| {
            l.starts_with("messaging_handler_duration_seconds_bucket")
                && l.contains(&format!("handler=\"{HANDLER}\""))
                && l.contains(&wanted)
        })
        .unwrap_or_else(|| panic!("no bucket le={le} for {HANDLER} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn each_attempt_is_timed_alone() {
    let broker = MemoryBroker::new();
    let failed = Arc::new(AtomicBool::new(false));
    let handler = HandlerSpec::new(HANDLER, [TOPIC], {
        let failed = Arc::clone(&failed);
        move |inv| {
            let step = String::from_utf8_lossy(&inv.message.payload).into_owned();
            let fail = step == "fails-once" && !failed.swap(true, Ordering::SeqCst);
            async move {
                if step == "slow" {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                if fail {
                    return Err(HandlerError::retryable("the first attempt fails"));
                }
                Ok(())
            }
        }
    })
    // A back-off far longer than any bucket the fast attempts must land in.
    .retry(RetryPolicy::new(1, Duration::from_millis(300)));
    let runtime = Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(broker.clone()))
        .without_registered()
        .install_global_producer(false)
        .concurrency(1)
        .handler(handler)
        .start()
        .await
        .unwrap();
    // One key: one lane, in this order.
    broker.append_all(
        ["fast", "slow", "after-slow", "fails-once", "after-retry"]
            .map(|step| OutgoingMessage::new(TOPIC, step.as_bytes().to_vec()).with_key("one")),
    );
    tokio::time::timeout(Duration::from_secs(30), broker.wait_idle())
        .await
        .expect("every message handled");

    let text = metrics().render();
    // Six attempts: every step once, "fails-once" twice.
    assert_eq!(bucket(&text, "+Inf"), 6, "{text}");
    // Only "slow" took 50 ms or more: "after-slow" did not inherit its wait, and neither the
    // retry nor "after-retry" the 300 ms back-off.
    assert_eq!(bucket(&text, "0.05"), 5, "{text}");
    assert_eq!(bucket(&text, "0.5"), 6, "{text}");
    runtime.shutdown().await.unwrap();
}
