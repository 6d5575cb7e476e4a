//! Records handed to librdkafka through rdkafka's `BaseProducer`, and their delivery reports
//! awaited: each record carries an `Arc` of its [`Report`], which the producer's polling
//! thread fills in (`ProducerContext::delivery`) and whose waker it wakes.
//!
//! A client that librdkafka declares dead (a fatal error: seen as `ProducerFenced` once the
//! cluster was unreachable for longer than `message.timeout.ms` with the idempotent producer)
//! accepts nothing any more; the next publish builds a new one with the same settings.
//! Records the dead client held fail with its error: none is reported delivered.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use messaging_core::{Headers, OutgoingMessage};
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext};

use crate::polling::ReportingProducer;

/// Why a record was not handed to librdkafka.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Its topic was not published to yet: make sure the topic exists, then
    /// [`Publisher::open`] it.
    NewTopic,
    /// librdkafka's queue is full (`queue.buffering.max.messages`): try again shortly.
    QueueFull,
    /// Any other refusal, final.
    Failed(KafkaError),
}

/// Publishes through one producer at a time, replaced when librdkafka declares it dead.
pub(crate) struct Publisher {
    /// What a replacement is built from.
    config: ClientConfig,
    current: RwLock<ReportingProducer>,
    /// Topics made sure of (see [`Refused::NewTopic`]).
    topics: RwLock<HashSet<Box<str>, BuildHasherDefault<Fnv>>>,
}

impl Publisher {
    pub(crate) fn new(config: ClientConfig) -> KafkaResult<Self> {
        let current = ReportingProducer::create(&config)?;
        Ok(Self {
            config,
            current: RwLock::new(current),
            topics: RwLock::default(),
        })
    }

    /// The producer in use, for flushing and metadata.
    pub(crate) fn producer(&self) -> ReportingProducer {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands `message` to librdkafka, which copies what it needs of it, and returns its
    /// delivery report to await.
    pub(crate) fn send(&self, message: &OutgoingMessage) -> Result<Delivery, Refused> {
        let known = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(message.topic.as_str());
        if !known {
            return Err(Refused::NewTopic);
        }
        let producer = self.live_producer();
        let report = Arc::new(Report::default());
        let mut record = BaseRecord::with_opaque_to(&message.topic, Arc::clone(&report))
            .payload(&message.payload[..]);
        if let Some(key) = &message.key {
            record = record.key(key.as_bytes());
        }
        if !message.headers.is_empty() {
            record = record.headers(owned_headers(&message.headers));
        }
        let refused = match producer.send(record) {
            Ok(()) => return Ok(Delivery(report)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(Refused::QueueFull);
            }
            Err(refused) => refused,
        };
        // Refused because the client just died (its error event may not be served yet)?
        // Then once more, on a new client.
        let (error, record) = refused;
        if producer.client().fatal_error().is_none() {
            return Err(Refused::Failed(error));
        }
        producer.context().mark_dead();
        match self.live_producer().send(record) {
            Ok(()) => Ok(Delivery(report)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(Refused::QueueFull)
            }
            Err((error, _)) => Err(Refused::Failed(error)),
        }
    }

    /// The producer in use, replaced first if librdkafka declared it dead.
    fn live_producer(&self) -> ReportingProducer {
        let producer = self.producer();
        if !producer.is_dead() {
            return producer;
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Replaced by another publish meanwhile?
        if !current.is_dead() {
            return current.clone();
        }
        match ReportingProducer::create(&self.config) {
            Ok(fresh) => {
                tracing::warn!("the Kafka producer failed for good; publishing with a new one");
                // The old client is destroyed by its polling thread once its last user lets go.
                *current = fresh;
            }
            Err(error) => {
                tracing::error!(%error, "could not replace the failed Kafka producer");
            }
        }
        current.clone()
    }

    /// Marks `topic` as made sure of, so that [`Publisher::send`] accepts its records.
    pub(crate) fn open(&self, topic: &str) {
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.into());
    }
}

/// A message's headers as librdkafka's.
fn owned_headers(headers: &Headers) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |all, (name, value)| {
            all.insert(Header {
                key: name,
                value: Some(value),
            })
        },
    )
}

/// The producer's context: delivery reports go to the record's [`Report`]; logs and errors
/// go to the rate-limited log; a fatal error marks the client dead.
#[derive(Default)]
pub(crate) struct Reports {
    dead: AtomicBool,
}

impl Reports {
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }
}

impl ClientContext for Reports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::quiet::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.mark_dead();
        }
        crate::quiet::error(&error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Arc<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Arc<Report>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => {
                if kills_the_client(error) && !self.is_dead() {
                    tracing::warn!(%error, "the Kafka producer was refused for good; the next publish builds a new one");
                    self.mark_dead();
                }
                Err(error.clone())
            }
        };
        // Set once: librdkafka reports each record once.
        let _ = report.outcome.set(outcome);
        report.waker.wake();
    }
}

/// Whether a record's failure means its client will deliver nothing any more. Besides a
/// fatal error: the broker fencing the idempotent producer's id (seen with Tansu once the
/// producer, its records timed out in flight, bumped its epoch), which librdkafka reports
/// record by record instead of raising a fatal error.
fn kills_the_client(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

/// A record's delivery report, set by the producer's polling thread.
#[derive(Default)]
pub(crate) struct Report {
    waker: AtomicWaker,
    outcome: OnceLock<KafkaResult<()>>,
}

/// The delivery report of a record handed to librdkafka: resolves when the broker has
/// acknowledged the record, or librdkafka has given up on it (`message.timeout.ms`).
pub(crate) struct Delivery(Arc<Report>);

impl Future for Delivery {
    type Output = KafkaResult<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let report = &self.0;
        if let Some(outcome) = report.outcome.get() {
            return Poll::Ready(outcome.clone());
        }
        // Registered before looking again, so a report set in between is not missed.
        report.waker.register(cx.waker());
        match report.outcome.get() {
            Some(outcome) => Poll::Ready(outcome.clone()),
            None => Poll::Pending,
        }
    }
}

/// FNV-1a, for the topic set: a lookup on every publish, of a short key chosen by the
/// application, where SipHash's resistance to flooding buys nothing.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers as _, Message as _};
    use rdkafka::mocking::MockCluster;
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;

    fn publisher(properties: &[(&str, &str)]) -> Publisher {
        let mut config = ClientConfig::new();
        for (name, value) in properties {
            config.set(*name, *value);
        }
        Publisher::new(config).expect("a producer")
    }

    #[tokio::test]
    async fn a_record_arrives_with_its_key_and_headers_once_its_topic_is_open() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 1, 1).unwrap();
        let publisher = publisher(&[("bootstrap.servers", &cluster.bootstrap_servers())]);
        let mut message = OutgoingMessage::new("orders", &b"{\"id\":7}"[..]).with_key("k-7");
        message.headers.insert("x-event-name", "order.created");
        message.headers.insert("x-trace-id", "t-1");

        assert!(matches!(publisher.send(&message), Err(Refused::NewTopic)));
        publisher.open("orders");
        publisher.open("orders");
        let delivery = publisher.send(&message).expect("accepted");
        drop(message);
        tokio::time::timeout(Duration::from_secs(10), delivery)
            .await
            .expect("reported in time")
            .expect("delivered");

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "publish-test")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("orders", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let record = consumer
            .poll(Duration::from_secs(10))
            .expect("a record within 10 s")
            .unwrap();
        assert_eq!(record.payload(), Some(&b"{\"id\":7}"[..]));
        assert_eq!(record.key(), Some(&b"k-7"[..]));
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers()
            .expect("headers")
            .iter()
            .map(|h| (h.key, h.value))
            .collect();
        assert_eq!(
            headers,
            [
                ("x-event-name", Some(&b"order.created"[..])),
                ("x-trace-id", Some(&b"t-1"[..]))
            ]
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_told_apart_from_a_failed_delivery() {
        // Nothing listens on port 1: no record can be delivered.
        let publisher = publisher(&[
            ("bootstrap.servers", "127.0.0.1:1"),
            ("queue.buffering.max.messages", "1"),
            ("message.timeout.ms", "300"),
        ]);
        publisher.open("orders");
        let message = OutgoingMessage::new("orders", &b"x"[..]);
        let first = publisher.send(&message).expect("room for one");
        assert!(matches!(publisher.send(&message), Err(Refused::QueueFull)));
        let failed = tokio::time::timeout(Duration::from_secs(10), first)
            .await
            .expect("reported in time");
        assert_eq!(
            failed,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
            ))
        );
        // The queue has room again once the record is freed, just after its report.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Err(refused) = publisher.send(&message) {
            assert!(matches!(refused, Refused::QueueFull), "{refused:?}");
            assert!(std::time::Instant::now() < deadline, "the queue stays full");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// librdkafka's mock cluster can inject a fatal error into the idempotent producer's
    /// next request: the client that reports it is replaced, and publishing goes on.
    #[tokio::test]
    async fn a_dead_producer_is_replaced_by_the_next_publish() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 1, 1).unwrap();
        let publisher = publisher(&[
            ("bootstrap.servers", &cluster.bootstrap_servers()),
            ("enable.idempotence", "true"),
        ]);
        publisher.open("orders");
        let message = OutgoingMessage::new("orders", &b"x"[..]);
        let first = publisher.producer();
        tokio::time::timeout(Duration::from_secs(10), publisher.send(&message).unwrap())
            .await
            .expect("reported")
            .expect("delivered");
        // What librdkafka's `rd_kafka_test_fatal_error` does, through the safe API: the
        // context learns of a fatal error.
        first.context().error(
            KafkaError::Global(RDKafkaErrorCode::Fatal),
            "test: the client is dead",
        );
        assert!(first.is_dead());
        tokio::time::timeout(Duration::from_secs(10), publisher.send(&message).unwrap())
            .await
            .expect("reported")
            .expect("delivered by the new producer");
        assert!(!publisher.producer().is_dead());
        assert!(!Arc::ptr_eq(
            &first.downgrade().upgrade().unwrap(),
            &publisher.producer().downgrade().upgrade().unwrap()
        ));
    }
}
