//! The producer's polling thread: it serves delivery reports (and the client's errors) as
//! they arrive. `BaseProducer::poll` waits on librdkafka's queue until its deadline; its last
//! millisecond is spent polling with a zero timeout in a loop, so the thread polls in rounds
//! of a second (a millisecond of spinning per second when idle: about 0.1 % of a core).
//!
//! The thread holds the client: dropping the last [`ReportingProducer`] only tells it to
//! stop, and the client is destroyed there at the end of its round (librdkafka's purge and
//! flush on destruction then never run on an async thread).

use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::publish::Reports;

/// How long one `poll` waits for events; also how long the thread takes to notice a stop.
const ROUND: Duration = Duration::from_secs(1);

/// The client's producer with its polling thread, which hands each delivery report to its
/// record's `Report`. Clones share both; the thread stops when the last clone drops.
#[derive(Clone)]
pub(crate) struct ReportingProducer(Arc<Polled>);

struct Polled {
    producer: Arc<BaseProducer<Reports>>,
    /// Set when the last handle drops: the thread ends its round and destroys the client.
    stop: Arc<AtomicBool>,
}

impl ReportingProducer {
    /// A producer with these settings, and its polling thread.
    pub(crate) fn create(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<Reports>> =
            Arc::new(config.create_with_context(Reports::default())?);
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("kafka-reports".to_owned())
            .spawn({
                let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
                move || {
                    while !stop.load(Ordering::Acquire) {
                        // A panic in a callback (a log subscriber's, say) must not end the
                        // thread: every later delivery report would go unserved.
                        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            producer.poll(ROUND);
                        }));
                        if polled.is_err() {
                            tracing::error!("a Kafka producer callback panicked; polling on");
                        }
                    }
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("polling thread: {e}")))?;
        Ok(Self(Arc::new(Polled { producer, stop })))
    }

    /// Whether librdkafka reported a fatal error: the client can deliver nothing any more.
    pub(crate) fn is_dead(&self) -> bool {
        self.0.producer.context().is_dead()
    }

    /// The client, held weakly: gone once the polling thread has destroyed it.
    #[cfg(test)]
    pub(crate) fn downgrade(&self) -> std::sync::Weak<BaseProducer<Reports>> {
        Arc::downgrade(&self.0.producer)
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
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use messaging_core::OutgoingMessage;
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::publish::Publisher;

    #[tokio::test]
    async fn reports_are_served_and_the_thread_destroys_the_client_once_dropped() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let publisher = Publisher::new(config).unwrap();
        publisher.open("orders");
        let client = publisher.producer().downgrade();
        for round in 0..3 {
            let delivery = publisher
                .send(&OutgoingMessage::new("orders", format!("{round}")))
                .unwrap_or_else(|refused| panic!("refused: {refused:?}"));
            tokio::time::timeout(Duration::from_secs(30), delivery)
                .await
                .expect("reported")
                .expect("delivered");
        }
        drop(publisher);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.upgrade().is_some() {
            assert!(Instant::now() < deadline, "the client outlived its handles");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
