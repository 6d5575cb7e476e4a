//! Request-reply on the memory broker (issue 24): typed replies, two requesting instances
//! at once, a timeout in virtual time, the responder's error, expired requests, late
//! replies and streamed replies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use messaging_core::message::header;
use messaging_core::metrics::metrics;
use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use messaging_core::{Config, MemoryBroker, OutgoingMessage};
use serde::{Deserialize, Serialize};

const ADD: &str = "rr.add";
const FAIL: &str = "rr.fail";
const SLOW: &str = "rr.slow";
const WORDS: &str = "rr.words";
const EXPIRED: &str = "rr.expired";

#[derive(Serialize, Deserialize)]
struct Add {
    asker: String,
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    asker: String,
    sum: i64,
}

#[message_handler(topic = ADD)]
async fn add(request: Add) -> Result<Sum, HandlerError> {
    Ok(Sum {
        asker: request.asker,
        sum: request.a + request.b,
    })
}

#[message_handler(topic = FAIL, max_retries = 1, retry_delay = "5ms")]
async fn always_fails(_request: serde_json::Value) -> Result<Sum, HandlerError> {
    Err(HandlerError::retryable("the oracle is out"))
}

#[message_handler(topic = SLOW)]
async fn slow(millis: u64) -> Result<u64, HandlerError> {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(millis)
}

#[message_handler(topic = WORDS)]
async fn count_to(n: u32) -> Result<ReplyStream<u32>, HandlerError> {
    Ok(ReplyStream::new(futures::stream::iter(0..n)))
}

static EXPIRED_RUNS: AtomicU32 = AtomicU32::new(0);

#[message_handler(topic = EXPIRED)]
async fn never_in_time(_request: serde_json::Value) -> Result<u32, HandlerError> {
    Ok(EXPIRED_RUNS.fetch_add(1, Ordering::SeqCst))
}

fn second_instance(harness: &TestHarness) -> Producer {
    Producer::new(Arc::new(harness.broker().clone()), Config::default())
}

#[tokio::test]
async fn two_instances_each_get_exactly_their_own_replies() {
    let harness = TestHarness::builder().start().await.unwrap();
    let instances = [harness.producer().clone(), second_instance(&harness)];
    let asks = instances.iter().enumerate().flat_map(|(i, producer)| {
        (0..50).map(move |n| async move {
            let asker = format!("instance-{i}");
            let sum: Sum = producer
                .request(
                    ADD,
                    &Add {
                        asker: asker.clone(),
                        a: n,
                        b: 1,
                    },
                )
                .timeout(Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(sum, Sum { asker, sum: n + 1 });
        })
    });
    futures::future::join_all(asks).await;
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_request_nobody_answers_times_out_after_its_timeout() {
    let producer = Producer::new(Arc::new(MemoryBroker::new()), Config::default());
    let started = tokio::time::Instant::now();
    let error = producer
        .request::<Sum, _>("rr.nobody", &1)
        .timeout(Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(
        error.to_string(),
        "no reply to the request on `rr.nobody` within 30s"
    );
}

#[tokio::test]
async fn a_failing_responder_answers_with_its_error_before_the_timeout() {
    let harness = TestHarness::builder().start().await.unwrap();
    let started = std::time::Instant::now();
    let error = harness
        .producer()
        .request::<Sum, _>(FAIL, &serde_json::json!({}))
        .timeout(Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match error {
        RequestError::Remote { kind, message } => {
            assert_eq!(kind, "handler");
            assert!(message.contains("the oracle is out"), "{message}");
        }
        other => panic!("expected the remote error, got {other:?}"),
    }
    harness.wait_idle().await;
    assert_eq!(
        harness.dlq(FAIL).len(),
        1,
        "and the request is dead-lettered"
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_reply_that_does_not_decode_is_told_apart() {
    let harness = TestHarness::builder().start().await.unwrap();
    let error = harness
        .producer()
        .request::<Vec<String>, _>(
            ADD,
            &Add {
                asker: "x".into(),
                a: 1,
                b: 2,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RequestError::Decode { .. }), "{error:?}");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_request_past_its_deadline_is_acknowledged_unhandled_and_counted() {
    let harness = TestHarness::builder().start().await.unwrap();
    let request = OutgoingMessage::new(EXPIRED, b"{}".to_vec())
        .with_header(header::REPLY_TO, "memory.replies.gone")
        .with_header(header::CORRELATION_ID, "x:1")
        .with_header(header::DEADLINE, "2020-01-01T00:00:00.000Z");
    harness.send_raw(request).await.unwrap();
    harness.wait_idle().await;
    assert_eq!(EXPIRED_RUNS.load(Ordering::SeqCst), 0);
    assert_eq!(metrics().expired_requests(EXPIRED, "never_in_time"), 1);
    assert!(harness.dlq(EXPIRED).is_empty());
    harness.shutdown().await;
}

#[tokio::test]
async fn a_late_reply_is_dropped_and_counted() {
    let harness = TestHarness::builder().start().await.unwrap();
    let late_before = metrics().late_replies();
    let error = harness
        .producer()
        .request::<u64, _>(SLOW, &300u64)
        .timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    // The handler still runs (the deadline had not passed when it started) and replies.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics().late_replies() == late_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the late reply was not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    harness.shutdown().await;
}

#[tokio::test]
async fn a_streamed_reply_of_100_chunks_arrives_in_order() {
    let harness = TestHarness::builder().start().await.unwrap();
    let chunks = harness
        .producer()
        .request_stream::<u32, _>(WORDS, &100u32)
        .timeout(Duration::from_secs(10))
        .await
        .unwrap();
    let got: Vec<u32> = chunks.map(Result::unwrap).collect().await;
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    harness.shutdown().await;
}
