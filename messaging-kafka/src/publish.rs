//! Records handed to librdkafka, and their delivery reports awaited. rdkafka's
//! `FutureProducer` spends on each record a `CString` of the topic's name (which librdkafka
//! then looks up under the client's write lock), a `CString` per header name, a clock read,
//! and two allocations for the report's channel. Here each topic's handle is opened once and
//! kept, header names go with their lengths, and the report comes through one `Arc`
//! (BENCHMARKS.md has what that is worth). rdkafka has no safe API for topic handles, hence
//! this module's unsafe code, as in `records.rs` and `signalled.rs`.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use messaging_core::{Headers, OutgoingMessage};
use rdkafka::bindings as rd;
use rdkafka::bindings::rd_kafka_vtype_t::{
    RD_KAFKA_VTYPE_END, RD_KAFKA_VTYPE_HEADERS, RD_KAFKA_VTYPE_KEY, RD_KAFKA_VTYPE_MSGFLAGS,
    RD_KAFKA_VTYPE_OPAQUE, RD_KAFKA_VTYPE_RKT, RD_KAFKA_VTYPE_VALUE,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientContext, IntoOpaque};

use crate::polling::ReportingProducer;

/// Why a record was not handed to librdkafka.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Its topic has no handle yet: make sure the topic exists, then [`Publisher::open`] it.
    NewTopic,
    /// librdkafka's queue is full (`queue.buffering.max.messages`): try again shortly.
    QueueFull,
    /// Any other refusal, final.
    Failed(KafkaError),
}

/// Publishes through one producer, with a handle per topic published to.
pub(crate) struct Publisher {
    /// Declared first: the handles must be destroyed before the client.
    topics: RwLock<HashMap<Box<str>, TopicHandle, BuildHasherDefault<Fnv>>>,
    producer: ReportingProducer,
}

impl Publisher {
    pub(crate) fn new(producer: ReportingProducer) -> Self {
        Self {
            topics: RwLock::default(),
            producer,
        }
    }

    /// The producer, for flushing and metadata.
    pub(crate) fn producer(&self) -> &ReportingProducer {
        &self.producer
    }

    /// Hands `message` to librdkafka, which copies what it needs of it, and returns its
    /// delivery report to await.
    pub(crate) fn send(&self, message: &OutgoingMessage) -> Result<Delivery, Refused> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let topic = topics.get(&*message.topic).ok_or(Refused::NewTopic)?;
        let headers = RecordHeaders::new(&message.headers).map_err(Refused::Failed)?;
        let report = Arc::new(Report::default());
        let opaque = Arc::clone(&report).into_ptr();
        let (key, key_len) = message
            .key
            .as_deref()
            .map_or((std::ptr::null(), 0), |k| (k.as_ptr(), k.len()));
        // SAFETY: the client and the topic handle are alive (the handle is dropped only with
        // `self`); with `F_COPY` librdkafka copies payload and key before returning; the
        // headers and the report's reference become librdkafka's only when it accepts the
        // record, and stay ours when it refuses.
        let error = unsafe {
            rd::rd_kafka_producev(
                self.producer.client().native_ptr(),
                RD_KAFKA_VTYPE_RKT,
                topic.0.as_ptr(),
                RD_KAFKA_VTYPE_MSGFLAGS,
                rd::RD_KAFKA_MSG_F_COPY,
                RD_KAFKA_VTYPE_VALUE,
                message.payload.as_ptr() as *mut c_void,
                message.payload.len(),
                RD_KAFKA_VTYPE_KEY,
                key as *const c_void,
                key_len,
                RD_KAFKA_VTYPE_OPAQUE,
                opaque,
                RD_KAFKA_VTYPE_HEADERS,
                headers.as_ptr(),
                RD_KAFKA_VTYPE_END,
            )
        };
        if error == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            headers.given_away();
            return Ok(Delivery(report));
        }
        // SAFETY: refused, so librdkafka holds no copy of the pointer.
        drop(unsafe { <Arc<Report> as IntoOpaque>::from_ptr(opaque) });
        Err(match RDKafkaErrorCode::from(error) {
            RDKafkaErrorCode::QueueFull => Refused::QueueFull,
            code => Refused::Failed(KafkaError::MessageProduction(code)),
        })
    }

    /// Opens a handle for `topic`, so that [`Publisher::send`] accepts its records.
    pub(crate) fn open(&self, topic: &str) -> KafkaResult<()> {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if topics.contains_key(topic) {
            return Ok(());
        }
        let name = CString::new(topic)?;
        let client = self.producer.client().native_ptr();
        // SAFETY: a live client and a valid C string; no configuration, so the producer's
        // topic defaults apply, as for a topic named on each record.
        let handle = unsafe { rd::rd_kafka_topic_new(client, name.as_ptr(), std::ptr::null_mut()) };
        let handle = NonNull::new(handle).ok_or_else(|| {
            // SAFETY: reads this thread's last librdkafka error.
            let code = unsafe { rd::rd_kafka_last_error() };
            KafkaError::MessageProduction(code.into())
        })?;
        topics.insert(topic.into(), TopicHandle(handle));
        Ok(())
    }
}

/// A topic's handle, holding a reference of the application's.
struct TopicHandle(NonNull<rd::rd_kafka_topic_t>);

// SAFETY: librdkafka's topic handles may be used from any thread.
unsafe impl Send for TopicHandle {}
unsafe impl Sync for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_topic_new` and is released once.
        unsafe { rd::rd_kafka_topic_destroy(self.0.as_ptr()) }
    }
}

/// A record's headers, ours until librdkafka accepts the record.
struct RecordHeaders(*mut rd::rd_kafka_headers_t);

impl RecordHeaders {
    fn new(headers: &Headers) -> KafkaResult<Self> {
        if headers.is_empty() {
            return Ok(Self(std::ptr::null_mut()));
        }
        // SAFETY: a new list, owned by the value returned (destroyed by `Drop` until given
        // away); librdkafka copies each name and value.
        unsafe {
            let list = Self(rd::rd_kafka_headers_new(headers.len()));
            for (name, value) in headers.iter() {
                let error = rd::rd_kafka_header_add(
                    list.0,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                );
                if error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return Err(KafkaError::MessageProduction(error.into()));
                }
            }
            Ok(list)
        }
    }

    fn as_ptr(&self) -> *mut rd::rd_kafka_headers_t {
        self.0
    }

    /// The record was accepted: librdkafka owns the list now.
    fn given_away(mut self) {
        self.0 = std::ptr::null_mut();
    }
}

impl Drop for RecordHeaders {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a list of ours, not given away.
            unsafe { rd::rd_kafka_headers_destroy(self.0) }
        }
    }
}

/// The producer's context: delivery reports go to the record's [`Report`]; logs and errors
/// go where rdkafka's defaults send them.
pub(crate) struct Reports;

impl ClientContext for Reports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::quiet::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::quiet::error(&error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Arc<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Arc<Report>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error.clone()),
        };
        // Set once: librdkafka reports each record once.
        let _ = report.outcome.set(outcome);
        report.waker.wake();
    }
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

/// FNV-1a, for the topic map: a lookup on every publish, of a short key chosen by the
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
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;

    fn publisher(properties: &[(&str, &str)]) -> Publisher {
        let mut config = ClientConfig::new();
        for (name, value) in properties {
            config.set(*name, *value);
        }
        Publisher::new(ReportingProducer::create(&config).expect("a producer"))
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
        publisher.open("orders").unwrap();
        publisher.open("orders").unwrap();
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
        publisher.open("orders").unwrap();
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

    #[test]
    fn a_topic_name_with_a_nul_byte_is_refused() {
        let publisher = publisher(&[("bootstrap.servers", "127.0.0.1:1")]);
        let error = publisher.open("or\0ders").unwrap_err();
        assert!(matches!(error, KafkaError::Nul(_)), "{error}");
    }
}
