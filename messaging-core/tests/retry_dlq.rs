//! The retry and dead-letter pipeline under virtual time (issue 2, done-when 2–4): retry
//! counts and delays, the DLQ record's fields, acknowledgement only after the DLQ write, and
//! the failures that skip retries.
//!
//! Topics here start with `retry-test.`; each test has its own handler and its own broker.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use messaging_core::{
    Acker, BoxFuture, Broker, BrokerError, Consumer, FailureKind, MemoryBroker, Message,
    OutgoingMessage, Runtime, Subscription,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

// ---- done-when 2: two failures, then success -------------------------------------------

static FLAKY_CALLS: Mutex<Vec<(Instant, u32)>> = Mutex::new(Vec::new());

#[message_handler(topic = "retry-test.flaky", max_retries = 3, retry_delay = "5s")]
async fn flaky(_body: serde_json::Value, meta: Metadata) -> anyhow::Result<()> {
    let calls = {
        let mut calls = FLAKY_CALLS.lock().unwrap();
        calls.push((Instant::now(), meta.attempt));
        calls.len()
    };
    anyhow::ensure!(calls > 2, "attempt {calls} fails");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn fails_twice_then_succeeds_ten_virtual_seconds_later() {
    let harness = TestHarness::builder()
        .runtime(|r| r.topics(["retry-test.flaky"]))
        .start()
        .await
        .unwrap();
    let published = Instant::now();
    harness
        .send("retry-test.flaky", &serde_json::json!({"n": 1}))
        .await
        .unwrap();
    harness.wait_idle().await;

    let calls = FLAKY_CALLS.lock().unwrap().clone();
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(calls[1].0 - calls[0].0, Duration::from_secs(5));
    assert_eq!(calls[2].0 - calls[1].0, Duration::from_secs(5));
    assert_eq!(
        calls[2].0 - published,
        Duration::from_secs(10),
        "10 s of virtual time in all"
    );
    assert_eq!(harness.attempts("flaky"), 3);
    assert_eq!(harness.succeeded("flaky"), 1);
    assert!(harness.dlq("retry-test.flaky").is_empty(), "no DLQ record");
    assert_eq!(
        harness.broker().unacknowledged("retry-test.flaky", "flaky"),
        0,
        "acknowledged"
    );
    harness.shutdown().await;
}

// ---- done-when 3: always fails, one complete DLQ record, ack after the record --------

#[message_handler(
    topic = "retry-test.payments",
    group = "payments",
    max_retries = 2,
    retry_delay = "1s"
)]
async fn always_fails(_body: serde_json::Value) -> anyhow::Result<()> {
    anyhow::bail!("card declined")
}

/// A memory broker that logs publishes and acknowledgements in order, and can refuse the first
/// few DLQ writes.
#[derive(Clone)]
struct Recording {
    inner: MemoryBroker,
    log: Arc<Mutex<Vec<String>>>,
    refuse_dlq_writes: Arc<AtomicU32>,
    /// Messages larger than this are refused, as Kafka refuses those over 1 000 000 bytes.
    max_bytes: usize,
}

impl Recording {
    fn new(refuse_dlq_writes: u32) -> Self {
        Self {
            inner: MemoryBroker::new(),
            log: Arc::default(),
            refuse_dlq_writes: Arc::new(AtomicU32::new(refuse_dlq_writes)),
            max_bytes: usize::MAX,
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Broker for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let topic = message.topic.clone();
            if message.payload.len() > self.max_bytes {
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("too big for {topic}"));
                return Err(BrokerError::operation(
                    "recording",
                    "publish",
                    "message too large",
                ));
            }
            let refused = topic.ends_with(".dlq")
                && self
                    .refuse_dlq_writes
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if refused {
                self.log.lock().unwrap().push(format!("refused {topic}"));
                return Err(BrokerError::operation(
                    "recording",
                    "publish",
                    "broker unavailable",
                ));
            }
            self.inner.publish(message).await?;
            self.log.lock().unwrap().push(format!("published {topic}"));
            Ok(())
        })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async move {
            let inner = self.inner.subscribe(subscription).await?;
            let acker = Arc::new(RecordingAcker {
                inner: inner.acker(),
                log: Arc::clone(&self.log),
            });
            Ok(Box::new(RecordingConsumer { inner, acker }) as Box<dyn Consumer>)
        })
    }
}

struct RecordingConsumer {
    inner: Box<dyn Consumer>,
    acker: Arc<RecordingAcker>,
}

impl Consumer for RecordingConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        self.inner.next_batch(max)
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::clone(&self.acker) as Arc<dyn Acker>
    }
}

struct RecordingAcker {
    inner: Arc<dyn Acker>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Acker for RecordingAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner.ack(message).await?;
            self.log
                .lock()
                .unwrap()
                .push(format!("acked {}", message.topic));
            Ok(())
        })
    }
}

async fn run_payments(broker: &Recording) {
    let runtime = Runtime::builder()
        .config(Config::default().with_source("billing"))
        .broker(Arc::new(broker.clone()))
        .install_global_producer(false)
        .topics(["retry-test.payments"])
        .concurrency(1)
        .start()
        .await
        .unwrap();
    let message = OutgoingMessage::new("retry-test.payments", br#"{"order_id":42}"#.to_vec())
        .with_key("42")
        .with_header("x-event-name", "order.created")
        .with_header("x-trace-id", "trace-7");
    broker.publish(message).await.unwrap();
    broker.inner.wait_idle().await;
    runtime.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_give_one_complete_record_acknowledged_after_it() {
    let broker = Recording::new(0);
    let started = chrono::Utc::now();
    run_payments(&broker).await;

    let records: Vec<_> = broker
        .inner
        .messages("retry-test.payments.dlq")
        .iter()
        .map(|m| messaging_core::DeadLetterRecord::from_bytes(&m.payload).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "exactly one record");
    let r = &records[0];
    assert_eq!(r.version, 1);
    assert_eq!(r.attempts, 3);
    assert_eq!(r.error.kind, FailureKind::Handler);
    assert_eq!(r.error.message, "card declined");
    assert!(started <= r.first_failure_at && r.first_failure_at <= r.last_failure_at);
    assert!(r.last_failure_at <= r.dead_lettered_at);
    assert_eq!(r.handler, "always_fails");
    assert_eq!(r.group, "payments");
    assert_eq!(r.event_name.as_deref(), Some("order.created"));
    assert_eq!(r.source, "billing");
    assert_eq!(r.trace_id.as_deref(), Some("trace-7"));
    assert_eq!(r.original.topic, "retry-test.payments");
    assert_eq!(r.original.key.as_deref(), Some("42"));
    assert_eq!(r.original.payload, r#"{"order_id":42}"#);
    assert_eq!(r.original.headers.get("x-trace-id"), Some("trace-7"));
    assert_eq!(r.original.position, "offset 0");

    // Every field of DESIGN §3 is on the wire under its name.
    let json: serde_json::Value =
        serde_json::from_slice(&broker.inner.messages("retry-test.payments.dlq")[0].payload)
            .unwrap();
    for field in [
        "version",
        "original",
        "error",
        "attempts",
        "first_failure_at",
        "last_failure_at",
        "handler",
        "group",
        "event_name",
        "source",
        "trace_id",
        "dead_lettered_at",
    ] {
        assert!(json.get(field).is_some(), "record lacks `{field}`: {json}");
    }
    for field in ["topic", "key", "payload", "headers", "position"] {
        assert!(
            json["original"].get(field).is_some(),
            "original lacks `{field}`"
        );
    }

    assert_eq!(
        broker.log(),
        [
            "published retry-test.payments",
            "published retry-test.payments.dlq",
            "acked retry-test.payments"
        ],
        "the original is acknowledged after the record is written"
    );
}

#[tokio::test(start_paused = true)]
async fn the_original_waits_while_the_dlq_write_fails() {
    let broker = Recording::new(2);
    run_payments(&broker).await;
    assert_eq!(
        broker.log(),
        [
            "published retry-test.payments",
            "refused retry-test.payments.dlq",
            "refused retry-test.payments.dlq",
            "published retry-test.payments.dlq",
            "acked retry-test.payments",
        ],
        "no acknowledgement before a DLQ write succeeded"
    );
    assert_eq!(broker.inner.messages("retry-test.payments.dlq").len(), 1);
}

// ---- done-when 4: failures that skip retries, and panics ---------------------------------

#[derive(Serialize, Deserialize)]
struct Order {
    order_id: u64,
    total: f64,
}

static TYPED_CALLS: AtomicU32 = AtomicU32::new(0);

#[message_handler(topic = "retry-test.typed", max_retries = 3, retry_delay = "1s", schema = Order)]
async fn typed(order: Order) -> anyhow::Result<()> {
    TYPED_CALLS.fetch_add(1, Ordering::SeqCst);
    std::hint::black_box(order.total);
    Ok(())
}

#[message_handler(topic = "retry-test.panics", max_retries = 2, retry_delay = "3s")]
async fn panics(_body: serde_json::Value) -> anyhow::Result<()> {
    panic!("invariant broken")
}

#[message_handler(topic = "retry-test.permanent", max_retries = 5, retry_delay = "1s")]
async fn refuses(_body: serde_json::Value) -> Result<(), HandlerError> {
    Err(HandlerError::permanent(std::io::Error::other(
        "account closed",
    )))
}

#[tokio::test(start_paused = true)]
async fn bad_payloads_and_permanent_errors_skip_retries_and_panics_do_not() {
    let harness = TestHarness::builder()
        .runtime(|r| {
            r.topics([
                "retry-test.typed",
                "retry-test.panics",
                "retry-test.permanent",
            ])
        })
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    harness
        .send(
            "retry-test.typed",
            &serde_json::json!({"order_id": "not a number"}),
        )
        .await
        .unwrap();
    harness
        .send_raw(OutgoingMessage::new(
            "retry-test.typed",
            "{oops".as_bytes().to_vec(),
        ))
        .await
        .unwrap();
    harness
        .send(
            "retry-test.typed",
            &serde_json::json!({"order_id": 1, "total": 2.5}),
        )
        .await
        .unwrap();
    harness
        .send("retry-test.permanent", &serde_json::json!({}))
        .await
        .unwrap();
    harness.wait_idle().await;
    assert_eq!(Instant::now(), started, "nothing waited for a retry");

    let typed_dlq = harness.dlq("retry-test.typed");
    let kinds: Vec<_> = typed_dlq
        .iter()
        .map(|r| (r.error.kind, r.attempts))
        .collect();
    assert_eq!(
        kinds,
        vec![(FailureKind::Schema, 1), (FailureKind::Decode, 1)]
    );
    assert_eq!(
        TYPED_CALLS.load(Ordering::SeqCst),
        1,
        "only the good order reached the handler body"
    );
    let permanent = harness.dlq("retry-test.permanent");
    assert_eq!(permanent.len(), 1);
    assert_eq!(
        (permanent[0].error.kind, permanent[0].attempts),
        (FailureKind::Handler, 1)
    );
    assert_eq!(harness.attempts("refuses"), 1);

    harness
        .send("retry-test.panics", &serde_json::json!({}))
        .await
        .unwrap();
    harness.wait_idle().await;
    let panicked = harness.dlq("retry-test.panics");
    assert_eq!(panicked.len(), 1);
    assert_eq!(
        (panicked[0].error.kind, panicked[0].attempts),
        (FailureKind::Panic, 3)
    );
    assert!(
        panicked[0].error.message.contains("invariant broken"),
        "{}",
        panicked[0].error.message
    );
    assert_eq!(harness.attempts("panics"), 3);
    assert_eq!(
        Instant::now() - started,
        Duration::from_secs(6),
        "two 3 s waits for the panics"
    );
    harness.shutdown().await;
}

// ---- a DLQ record too big for the broker must not stall the lane ---------------------------

static BIG_SEEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());

#[message_handler(topic = "retry-test.big", max_retries = 0)]
async fn big(body: serde_json::Value) -> anyhow::Result<()> {
    BIG_SEEN.lock().unwrap().push(body.to_string().len());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_oversized_dlq_record_is_truncated_and_the_lane_goes_on() {
    let broker = Recording {
        max_bytes: 1_000_000,
        ..Recording::new(0)
    };
    let runtime = Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(broker.clone()))
        .install_global_producer(false)
        .topics(["retry-test.big"])
        .concurrency(1)
        .start()
        .await
        .unwrap();
    // 700 kB of NUL bytes: not JSON, and six times larger once escaped in a JSON record.
    let poison = OutgoingMessage::new("retry-test.big", vec![0u8; 700_000]).with_key("k");
    broker.inner.append(poison);
    broker
        .inner
        .append(OutgoingMessage::new("retry-test.big", b"{\"ok\":1}".to_vec()).with_key("k"));
    // Virtual time: an hour of DLQ-write retries would pass in no time if the lane stalled.
    tokio::time::timeout(Duration::from_secs(3600), broker.inner.wait_idle())
        .await
        .expect("the lane stalled on a DLQ record the broker refuses");
    runtime.shutdown().await.unwrap();

    assert_eq!(
        BIG_SEEN.lock().unwrap().len(),
        1,
        "the message after the poison was handled"
    );
    let dlq = broker.inner.messages("retry-test.big.dlq");
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0].payload.len() <= messaging_core::dlq::MAX_RECORD_BYTES);
    let record = messaging_core::DeadLetterRecord::from_bytes(&dlq[0].payload).unwrap();
    assert_eq!(record.error.kind, FailureKind::Decode);
    assert!(record.original.truncated);
    assert_eq!(record.original.size, Some(700_000));
    assert!(
        !broker.log().iter().any(|l| l.starts_with("too big")),
        "{:?}",
        broker.log()
    );
}
