//! The runtime acknowledges the messages a lane handled in a row together, with one
//! `Acker::ack_batch`: far fewer calls than messages, every message acknowledged once the run
//! is done, and nothing held back while a failed message waits for its retry or a slow
//! handler runs. A broker that implements only `Acker::ack` gets each message acknowledged
//! once all the same, through the default `ack_batch`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::{
    Acker, BoxFuture, Broker, BrokerError, Config, Consumer, HandlerError, HandlerSpec,
    MemoryBroker, Message, OutgoingMessage, RetryPolicy, Runtime, Subscription,
};

const TOPIC: &str = "batched-acks.orders";

/// What the runtime asked of the acker.
#[derive(Default)]
struct AckCounts {
    single: AtomicUsize,
    batch_calls: AtomicUsize,
    batched_messages: AtomicUsize,
}

impl AckCounts {
    fn acked(&self) -> usize {
        self.single.load(Ordering::SeqCst) + self.batched_messages.load(Ordering::SeqCst)
    }
}

/// The memory broker, counting acknowledgements.
struct Counting {
    inner: MemoryBroker,
    counts: Arc<AckCounts>,
    /// Whether its acker acknowledges a batch in one step; else only `ack` is implemented.
    batching: bool,
}

struct CountingConsumer {
    inner: Box<dyn Consumer>,
    counts: Arc<AckCounts>,
    batching: bool,
}

/// An acker with only the required method.
struct OneByOne(CountingAcker);

impl Acker for OneByOne {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.0.ack(message)
    }
}

struct CountingAcker {
    inner: Arc<dyn Acker>,
    counts: Arc<AckCounts>,
}

impl Broker for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish(message)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async move {
            let inner = self.inner.subscribe(subscription).await?;
            Ok(Box::new(CountingConsumer {
                inner,
                counts: Arc::clone(&self.counts),
                batching: self.batching,
            }) as Box<dyn Consumer>)
        })
    }
}

impl Consumer for CountingConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        self.inner.next_batch(max)
    }

    fn acker(&self) -> Arc<dyn Acker> {
        let counting = CountingAcker {
            inner: self.inner.acker(),
            counts: Arc::clone(&self.counts),
        };
        match self.batching {
            true => Arc::new(counting),
            false => Arc::new(OneByOne(counting)),
        }
    }
}

impl Acker for CountingAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.counts.single.fetch_add(1, Ordering::SeqCst);
        self.inner.ack(message)
    }

    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.counts.batch_calls.fetch_add(1, Ordering::SeqCst);
        self.counts
            .batched_messages
            .fetch_add(messages.len(), Ordering::SeqCst);
        self.inner.ack_batch(messages)
    }
}

async fn runtime(broker: &Counting, handler: HandlerSpec, concurrency: usize) -> Runtime {
    Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(Counting {
            inner: broker.inner.clone(),
            counts: Arc::clone(&broker.counts),
            batching: broker.batching,
        }))
        .without_registered()
        .install_global_producer(false)
        .concurrency(concurrency)
        .handler(handler)
        .start()
        .await
        .unwrap()
}

/// Waits (up to 30 s) until the handler was called `n` times.
async fn handler_calls(calls: &Mutex<Vec<String>>, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while calls.lock().unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: calls {:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (up to 30 s) until `n` messages were acknowledged.
async fn acknowledged(counts: &AckCounts, n: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counts.acked() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {} acknowledged",
            counts.acked()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn counting() -> Counting {
    Counting {
        inner: MemoryBroker::new(),
        counts: Arc::default(),
        batching: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_messages_are_acknowledged_in_batches() {
    for concurrency in [1, 8] {
        let broker = counting();
        let handled = Arc::new(AtomicUsize::new(0));
        let handler = HandlerSpec::new("count", [TOPIC], {
            let handled = Arc::clone(&handled);
            move |_| {
                handled.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            }
        });
        let runtime = runtime(&broker, handler, concurrency).await;
        broker.inner.append_all((0..2_000).map(|n| {
            OutgoingMessage::new(TOPIC, n.to_string().into_bytes()).with_key(format!("k{n}"))
        }));
        // Idle means nothing in flight: every message acknowledged.
        tokio::time::timeout(Duration::from_secs(30), broker.inner.wait_idle())
            .await
            .expect("every message acknowledged");
        runtime.shutdown().await.unwrap();
        let counts = &broker.counts;
        assert_eq!(handled.load(Ordering::SeqCst), 2_000);
        assert_eq!(counts.acked(), 2_000, "each message acknowledged once");
        assert_eq!(counts.single.load(Ordering::SeqCst), 0);
        let calls = counts.batch_calls.load(Ordering::SeqCst);
        assert!(
            calls > 0 && calls <= 2_000 / 8,
            "{calls} calls for 2 000 messages on {concurrency} lanes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acker_with_only_ack_gets_each_message_acknowledged_once() {
    let broker = Counting {
        batching: false,
        ..counting()
    };
    let handler = HandlerSpec::new("count", [TOPIC], |_| async { Ok(()) });
    let runtime = runtime(&broker, handler, 4).await;
    broker.inner.append_all((0..500).map(|n| {
        OutgoingMessage::new(TOPIC, n.to_string().into_bytes()).with_key(format!("k{n}"))
    }));
    tokio::time::timeout(Duration::from_secs(30), broker.inner.wait_idle())
        .await
        .expect("every message acknowledged");
    runtime.shutdown().await.unwrap();
    assert_eq!(broker.counts.single.load(Ordering::SeqCst), 500);
    assert_eq!(broker.counts.batch_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_does_not_hold_back_what_was_handled_before_it() {
    let broker = counting();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let handler = HandlerSpec::new("third_fails_once", [TOPIC], {
        let calls = Arc::clone(&calls);
        move |inv| {
            let body = String::from_utf8_lossy(&inv.message.payload).into_owned();
            calls.lock().unwrap().push(body.clone());
            let fail = body == "m2" && inv.attempt == 1;
            async move {
                if fail {
                    Err(HandlerError::retryable("first attempt of m2 fails"))
                } else {
                    Ok(())
                }
            }
        }
    })
    .retry(RetryPolicy::new(1, Duration::from_secs(3)));
    let runtime = runtime(&broker, handler, 1).await;
    // One key: one lane, in order.
    broker.inner.append_all(
        ["m0", "m1", "m2", "m3"]
            .map(|m| OutgoingMessage::new(TOPIC, m.as_bytes().to_vec()).with_key("k")),
    );
    handler_calls(&calls, 3, "m2 attempted").await;
    // m2 now waits 3 s for its retry: m0 and m1 are acknowledged meanwhile, which the calls
    // show by m2's retry not having come yet.
    acknowledged(&broker.counts, 2, "m0 and m1 acknowledged").await;
    assert_eq!(*calls.lock().unwrap(), ["m0", "m1", "m2"]);
    assert_eq!(
        broker.counts.acked(),
        2,
        "m0 and m1 acknowledged before m2's retry"
    );
    tokio::time::timeout(Duration::from_secs(10), broker.inner.wait_idle())
        .await
        .expect("every message acknowledged");
    assert_eq!(*calls.lock().unwrap(), ["m0", "m1", "m2", "m2", "m3"]);
    assert_eq!(broker.counts.acked(), 4);
    runtime.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_does_not_hold_back_what_was_handled_before_it() {
    let broker = counting();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let m1_done = Arc::new(AtomicBool::new(false));
    let handler = HandlerSpec::new("second_is_slow", [TOPIC], {
        let (calls, m1_done) = (Arc::clone(&calls), Arc::clone(&m1_done));
        move |inv| {
            let body = String::from_utf8_lossy(&inv.message.payload).into_owned();
            calls.lock().unwrap().push(body.clone());
            let m1_done = Arc::clone(&m1_done);
            async move {
                if body == "m1" {
                    // The slow work of the scenario, not a wait.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    m1_done.store(true, Ordering::SeqCst);
                }
                Ok::<_, HandlerError>(())
            }
        }
    });
    let runtime = runtime(&broker, handler, 1).await;
    broker.inner.append_all(
        ["m0", "m1"].map(|m| OutgoingMessage::new(TOPIC, m.as_bytes().to_vec()).with_key("k")),
    );
    handler_calls(&calls, 2, "m1 started").await;
    // m1 takes 3 s: m0 is acknowledged meanwhile, not with m1.
    acknowledged(&broker.counts, 1, "m0 acknowledged").await;
    assert!(
        !m1_done.load(Ordering::SeqCst),
        "m0 was acknowledged only once m1 was done"
    );
    assert_eq!(broker.counts.acked(), 1, "m0 acknowledged while m1 runs");
    tokio::time::timeout(Duration::from_secs(10), broker.inner.wait_idle())
        .await
        .expect("every message acknowledged");
    assert_eq!(broker.counts.acked(), 2);
    runtime.shutdown().await.unwrap();
}
