//! The producer's polling thread: it serves delivery reports as they arrive and sleeps in
//! between. rdkafka's `ThreadedProducer` polls in 100 ms rounds, and each round ends with
//! about a millisecond of polling with a zero timeout in a loop. `BaseProducer::poll` turns
//! the time left before its deadline into whole milliseconds, which is 0 for the last one.
//! That is about 1 % of a core for an idle producer (BENCHMARKS.md, Kafka). Here librdkafka
//! wakes the thread when its event queue stops being empty (as it wakes the reader of the
//! record queue), and the thread then serves what is queued without waiting.

use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::publish::Reports;
use crate::signalled::{Signal, SignalledQueue};

/// How long the thread sleeps at most without a wake-up: only a safety net, as librdkafka
/// wakes it for every event.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The client's producer with its polling thread, which hands each delivery report to its
/// record's `Report`. Clones share both; the thread stops when the last clone drops.
#[derive(Clone)]
pub(crate) struct ReportingProducer(Arc<Polled>);

struct Polled {
    /// Stopped and joined first, then the queue handle goes, then the client.
    thread: Option<JoinHandle<()>>,
    events: Arc<EventQueue>,
    producer: Arc<BaseProducer<Reports>>,
}

impl ReportingProducer {
    /// A producer with these settings, and its polling thread.
    pub(crate) fn create(config: &ClientConfig) -> KafkaResult<Self> {
        Self::sleeping_at_most(config, IDLE_WAKE)
    }

    /// As [`ReportingProducer::create`], the thread sleeping up to `idle_wake` unless woken.
    fn sleeping_at_most(config: &ClientConfig, idle_wake: Duration) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(Reports)?);
        let rk = producer.client().native_ptr();
        let events = Arc::new(SignalledQueue::main(rk, Wakes::default()).ok_or_else(|| {
            KafkaError::ClientCreation("no handle on the producer's event queue".to_owned())
        })?);
        let thread = std::thread::Builder::new()
            .name("kafka-reports".to_owned())
            .spawn({
                let (producer, events) = (Arc::clone(&producer), Arc::clone(&events));
                move || serve(&producer, &events, idle_wake)
            })
            .map_err(|e| KafkaError::ClientCreation(format!("polling thread: {e}")))?;
        Ok(Self(Arc::new(Polled {
            thread: Some(thread),
            events,
            producer,
        })))
    }
}

impl Deref for ReportingProducer {
    type Target = BaseProducer<Reports>;

    fn deref(&self) -> &BaseProducer<Reports> {
        &self.0.producer
    }
}

impl Drop for Polled {
    fn drop(&mut self) {
        self.events.signal().stop();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the Kafka producer's polling thread panicked");
        }
    }
}

/// Serves the producer's events until told to stop: all that is queued, then a sleep until
/// librdkafka queues more.
fn serve(producer: &BaseProducer<Reports>, events: &EventQueue, idle_wake: Duration) {
    loop {
        // `poll` with no time serves one event (a delivery-report event carries many).
        while events.len() > 0 {
            producer.poll(Duration::ZERO);
        }
        if !events.signal().wait(idle_wake) {
            return;
        }
    }
}

/// The producer's event queue, as a handle of ours that librdkafka signals.
type EventQueue = SignalledQueue<Wakes>;

/// What the polling thread is woken for.
#[derive(Default)]
struct Wakes {
    state: Mutex<Wake>,
    changed: Condvar,
}

#[derive(Default)]
struct Wake {
    /// Events arrived since the thread last looked.
    events: bool,
    stop: bool,
}

impl Wakes {
    fn lock(&self) -> MutexGuard<'_, Wake> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes only the lock of `Wakes`, which is never held while calling librdkafka.
impl Signal for Wakes {
    fn raise(&self) {
        self.lock().events = true;
        self.changed.notify_one();
    }
}

impl Wakes {
    /// Sleeps until events arrive, `stop`, or `at_most` passed; `false` once stopped.
    fn wait(&self, at_most: Duration) -> bool {
        let mut wake = self.lock();
        if !wake.events && !wake.stop {
            wake = self
                .changed
                .wait_timeout(wake, at_most)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        wake.events = false;
        !wake.stop
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use messaging_core::OutgoingMessage;
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::publish::Publisher;

    /// With the safety net an hour away, only librdkafka's wake-up can get a report served.
    #[tokio::test]
    async fn reports_are_served_when_they_arrive_not_on_a_timer() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let producer =
            ReportingProducer::sleeping_at_most(&config, Duration::from_secs(3600)).unwrap();
        let publisher = Publisher::new(producer.clone());
        publisher.open("orders").unwrap();
        for round in 0..3 {
            // Idle in between, so that the thread is asleep when the next report comes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let delivery = publisher
                .send(&OutgoingMessage::new("orders", format!("{round}")))
                .unwrap_or_else(|refused| panic!("refused: {refused:?}"));
            tokio::time::timeout(Duration::from_secs(30), delivery)
                .await
                .expect("reported while the thread slept")
                .expect("delivered");
        }
        drop(publisher);
        // The last clone stops and joins the thread, and the client goes.
        drop(producer);
    }
}
