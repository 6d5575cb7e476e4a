//! A consumer whose client reports itself unusable (`BrokerError::ClientDead`, as a fenced
//! Kafka member does) is closed and replaced by a new subscription: what it held is handled
//! again through the new one, nothing is lost, `/health/ready` says why meanwhile, and
//! replacements that keep dying are paced by a growing back-off instead of spinning.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::{
    Acker, BoxFuture, Broker, BrokerError, Config, Consumer, HandlerSpec, MemoryBroker, Message,
    OutgoingMessage, Readiness, Runtime, Subscription,
};
use tokio::sync::{Notify, Semaphore};

const TOPIC: &str = "dead-consumer.orders";

/// The memory broker, whose consumers die when told to.
#[derive(Clone)]
struct Dying {
    inner: MemoryBroker,
    /// When each subscription was made.
    subscribed: Arc<Mutex<Vec<tokio::time::Instant>>>,
    /// Kills the consumer fetching when it is notified.
    kill: Arc<Notify>,
    /// How many of the next consumers die at their first fetch.
    die_at_once: Arc<AtomicUsize>,
}

struct DyingConsumer {
    inner: Box<dyn Consumer>,
    kill: Arc<Notify>,
    dead: Arc<AtomicBool>,
}

/// Refuses acknowledgements once its consumer died (a dead client stores nothing).
struct DyingAcker {
    inner: Arc<dyn Acker>,
    dead: Arc<AtomicBool>,
}

fn fenced() -> BrokerError {
    BrokerError::client_dead("dying", "fenced by a newer member")
}

impl Broker for Dying {
    fn name(&self) -> &'static str {
        "dying"
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish(message)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async move {
            self.subscribed
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            let inner = self.inner.subscribe(subscription).await?;
            let dies = self
                .die_at_once
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            Ok(Box::new(DyingConsumer {
                inner,
                kill: Arc::clone(&self.kill),
                dead: Arc::new(AtomicBool::new(dies)),
            }) as Box<dyn Consumer>)
        })
    }
}

impl Consumer for DyingConsumer {
    fn readiness(&self) -> Readiness {
        Readiness::ready()
    }

    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(async move {
            if self.dead.load(Ordering::SeqCst) {
                return Err(fenced());
            }
            tokio::select! {
                _ = self.kill.notified() => {
                    self.dead.store(true, Ordering::SeqCst);
                    Err(fenced())
                }
                batch = self.inner.next_batch(max) => batch,
            }
        })
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::new(DyingAcker {
            inner: self.inner.acker(),
            dead: Arc::clone(&self.dead),
        })
    }
}

impl DyingAcker {
    fn refused(&self) -> Option<BrokerError> {
        self.dead
            .load(Ordering::SeqCst)
            .then_some(BrokerError::Closed { broker: "dying" })
    }
}

impl Acker for DyingAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        match self.refused() {
            Some(error) => Box::pin(async move { Err(error) }),
            None => self.inner.ack(message),
        }
    }

    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        match self.refused() {
            Some(error) => Box::pin(async move { Err(error) }),
            None => self.inner.ack_batch(messages),
        }
    }
}

fn dying() -> Dying {
    Dying {
        inner: MemoryBroker::new(),
        subscribed: Arc::default(),
        kill: Arc::default(),
        die_at_once: Arc::default(),
    }
}

async fn runtime(broker: &Dying, handler: HandlerSpec) -> Runtime {
    Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(broker.clone()))
        .without_registered()
        .install_global_producer(false)
        .concurrency(2)
        .handler(handler)
        .start()
        .await
        .unwrap()
}

/// Waits (up to `patience`) until `done` holds.
async fn until(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + patience;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not yet: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn count(calls: &Mutex<Vec<String>>, body: &str) -> usize {
    calls.lock().unwrap().iter().filter(|c| *c == body).count()
}

fn publish(broker: &Dying, bodies: &[&str], key: impl Fn(&str) -> String) {
    broker.inner.append_all(
        bodies
            .iter()
            .map(|b| OutgoingMessage::new(TOPIC, b.as_bytes().to_vec()).with_key(key(b))),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumer_is_replaced_and_what_it_held_is_handled_again() {
    let broker = dying();
    let calls = Arc::new(Mutex::new(Vec::new()));
    // The first attempt of `slow` waits for this: it is in flight when the consumer dies.
    let gate = Arc::new(Semaphore::new(0));
    let handler = HandlerSpec::new("record", [TOPIC], {
        let (calls, gate) = (Arc::clone(&calls), Arc::clone(&gate));
        move |inv| {
            let body = String::from_utf8_lossy(&inv.message.payload).into_owned();
            let first_slow = body == "slow" && !calls.lock().unwrap().contains(&body);
            calls.lock().unwrap().push(body);
            let gate = Arc::clone(&gate);
            async move {
                if first_slow {
                    gate.acquire().await.expect("open").forget();
                }
                Ok(())
            }
        }
    });
    let runtime = runtime(&broker, handler).await;
    let before = ["b0", "b1", "b2", "b3"];
    publish(&broker, &before, |b| b.to_owned());
    until("the first messages", Duration::from_secs(5), || {
        before.iter().all(|b| count(&calls, b) == 1)
    })
    .await;
    // `behind` waits in the scheduler behind `slow`, of the same key.
    publish(&broker, &["slow", "behind"], |_| "s".to_owned());
    until("slow in flight", Duration::from_secs(5), || {
        count(&calls, "slow") == 1
    })
    .await;

    broker.kill.notify_one();
    let groups = runtime.connection().groups();
    let readiness = &groups[0].1;
    until("the readiness says why", Duration::from_secs(5), || {
        !readiness.is_ready()
            && readiness
                .problems_older_than(Duration::ZERO)
                .iter()
                .any(|p| p.contains("consumer") && p.contains("fenced by a newer member"))
    })
    .await;
    // Its acknowledgement fails (the client is dead): it is handled again later.
    gate.add_permits(1);
    until("a new subscription", Duration::from_secs(10), || {
        broker.subscribed.lock().unwrap().len() == 2
    })
    .await;

    let after = ["a0", "a1", "a2", "a3"];
    publish(&broker, &after, |b| b.to_owned());
    until(
        "everything handled through the new consumer",
        Duration::from_secs(10),
        || {
            after.iter().all(|b| count(&calls, b) >= 1)
                && count(&calls, "slow") >= 2
                && count(&calls, "behind") >= 1
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), broker.inner.wait_idle())
        .await
        .expect("every message acknowledged by the new consumer");
    let groups = runtime.connection().groups();
    assert!(groups[0].1.is_ready());
    assert!(groups[0].1.problems_older_than(Duration::ZERO).is_empty());
    assert_eq!(broker.subscribed.lock().unwrap().len(), 2);
    tokio::time::timeout(Duration::from_secs(10), runtime.shutdown())
        .await
        .expect("shuts down")
        .unwrap();
    // Messages of the first consumer that were acknowledged are not handled again.
    for b in before {
        assert_eq!(count(&calls, b), 1, "{b}");
    }
}

#[tokio::test(start_paused = true)]
async fn replacements_that_keep_dying_wait_longer_and_longer() {
    let broker = dying();
    // The first consumer and the next seven die at their first fetch.
    broker.die_at_once.store(8, Ordering::SeqCst);
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = HandlerSpec::new("count", [TOPIC], {
        let handled = Arc::clone(&handled);
        move |_| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }
    });
    let runtime = runtime(&broker, handler).await;
    publish(&broker, &["m"], |_| "k".to_owned());
    until("a consumer that lives", Duration::from_secs(300), || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    let subscribed = broker.subscribed.lock().unwrap().clone();
    assert_eq!(subscribed.len(), 9);
    let gaps: Vec<u64> = subscribed
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4, 8, 16, 30, 30, 30]);
    runtime.shutdown().await.unwrap();
}
