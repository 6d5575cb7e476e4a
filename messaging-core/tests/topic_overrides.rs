//! Topic names overridden per environment (`MESSAGING_TOPIC_<NAME>`, issue 23): handlers read
//! the resolved topic, publishing to the name the code uses lands there, and the DLQ follows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use messaging_core::testing::TestHarness;
use messaging_core::{Config, HandlerError, HandlerSpec, Invocation, RetryPolicy};

#[tokio::test(start_paused = true)]
async fn handlers_and_publishers_use_the_environments_topic() {
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = HandlerSpec::new("orders", ["orders.created"], {
        let handled = Arc::clone(&handled);
        move |inv: Invocation| {
            handled.fetch_add(1, Ordering::SeqCst);
            let fail = inv.message.payload.as_ref() == b"\"bad\"";
            async move {
                if fail {
                    Err(HandlerError::permanent("bad order"))
                } else {
                    Ok(())
                }
            }
        }
    })
    .retry(RetryPolicy::NONE);
    let config = Config::default()
        .with_backend("memory")
        .with_topic_override("orders.created", "staging.orders");
    assert_eq!(
        config.topic_overrides,
        BTreeMap::from([("ORDERS_CREATED".to_owned(), "staging.orders".to_owned())]),
        "as MESSAGING_TOPIC_ORDERS_CREATED=staging.orders would set it"
    );
    let builder = messaging_core::Runtime::builder()
        .config(config.clone())
        .without_registered()
        .handler(handler);
    let selected = builder.selected_handlers().unwrap();
    assert_eq!(
        selected[0].topics(),
        ["staging.orders"],
        "what `consumer list` shows"
    );
    let harness = TestHarness::builder()
        .runtime(|_| builder)
        .start()
        .await
        .unwrap();
    harness.send("orders.created", &"good").await.unwrap();
    harness.send("orders.created", &"bad").await.unwrap();
    harness.wait_idle().await;
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    assert_eq!(harness.broker().messages("staging.orders").len(), 2);
    assert!(harness.broker().messages("orders.created").is_empty());
    assert_eq!(harness.dlq_topic("staging.orders.dlq").len(), 1);
    harness.shutdown().await;
}
