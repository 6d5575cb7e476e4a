//! A lane reuses one invocation: each message is moved in for its attempts and out again.
//! Handlers, borrowing (`HandlerSpec::borrowing`, as the macros' are) or owning
//! (`HandlerSpec::new`), must each see their own message, the right attempt number and
//! their own name, on one lane and on several.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::{
    Config, HandlerError, HandlerSpec, MemoryBroker, OutgoingMessage, RetryPolicy, Runtime,
};

type Seen = Arc<Mutex<Vec<(String, String, u32)>>>;

/// Records (handler, payload, attempt); a payload starting with `fail` fails its first attempt.
fn record(seen: &Seen, handler: &str, payload: &[u8], attempt: u32) -> Result<(), HandlerError> {
    let payload = String::from_utf8_lossy(payload).into_owned();
    let fail = payload.starts_with("fail") && attempt == 1;
    seen.lock()
        .unwrap()
        .push((handler.to_owned(), payload, attempt));
    if fail {
        return Err(HandlerError::retryable("first attempt fails"));
    }
    Ok(())
}

async fn run(concurrency: usize) {
    let broker = MemoryBroker::new();
    let seen: Seen = Arc::default();
    let borrowing = HandlerSpec::borrowing("borrowing", ["reuse.borrowing"], {
        let seen = Arc::clone(&seen);
        move |inv| {
            let done = record(&seen, inv.handler, &inv.message.payload, inv.attempt);
            async move { done }
        }
    })
    .retry(RetryPolicy::new(1, Duration::from_millis(5)));
    let owning = HandlerSpec::new("owning", ["reuse.owning"], {
        let seen = Arc::clone(&seen);
        move |inv| {
            let seen = Arc::clone(&seen);
            async move { record(&seen, inv.handler, &inv.message.payload, inv.attempt) }
        }
    })
    .retry(RetryPolicy::new(1, Duration::from_millis(5)));
    let runtime = Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(broker.clone()))
        .without_registered()
        .install_global_producer(false)
        .concurrency(concurrency)
        .handler(borrowing)
        .handler(owning)
        .start()
        .await
        .unwrap();
    let payloads = ["a", "fail-b", "c", "d", "fail-e", "f"];
    for topic in ["reuse.borrowing", "reuse.owning"] {
        broker.append_all(payloads.iter().enumerate().map(|(i, p)| {
            OutgoingMessage::new(topic, p.as_bytes().to_vec()).with_key(format!("k{}", i % 3))
        }));
    }
    tokio::time::timeout(Duration::from_secs(30), broker.wait_idle())
        .await
        .expect("every message handled");
    runtime.shutdown().await.unwrap();

    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let mut expected = Vec::new();
    for handler in ["borrowing", "owning"] {
        for payload in payloads {
            expected.push((handler.to_owned(), payload.to_owned(), 1));
            if payload.starts_with("fail") {
                expected.push((handler.to_owned(), payload.to_owned(), 2));
            }
        }
    }
    expected.sort();
    assert_eq!(seen, expected, "concurrency {concurrency}");
}

#[tokio::test]
async fn each_attempt_sees_its_own_message_on_one_lane() {
    run(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_sees_its_own_message_on_many_lanes() {
    run(4).await;
}
