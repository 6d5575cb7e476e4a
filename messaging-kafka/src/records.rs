//! Fetched records read in batches. Each partition assigned to a consumer has its queue
//! forwarded to one queue of the consumer's, which is read with librdkafka's batch call:
//! one call for up to [`BATCH`] records, without the event, the `Arc` and the clock read
//! rdkafka's stream spends on each record (about 40 % of the raw stream's CPU per record,
//! BENCHMARKS.md). The group's events (rebalances, commit results) stay on the main queue,
//! which the stream still serves. rdkafka has no safe API for this, hence this module's
//! unsafe code (the crate's other unsafe modules are `publish.rs` and `signalled.rs`).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::ptr::{self, NonNull};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use rdkafka::Timestamp;
use rdkafka::bindings as rd;
use rdkafka::message::{Header, Headers};

use crate::signalled::{Signal, SignalledQueue};

/// The most records one call takes.
pub(crate) const BATCH: usize = 256;

/// A queue of the consumer's, fed with the records of the partitions forwarded to it, whose
/// reader librdkafka wakes (from its threads) when the queue stops being empty. Once it is
/// dropped, the forwarded partitions still hold the queue itself until the client is
/// destroyed, and records sent to it then are dropped.
pub(crate) struct RecordQueue(SignalledQueue<AtomicWaker>);

impl Signal for AtomicWaker {
    fn raise(&self) {
        self.wake();
    }
}

impl RecordQueue {
    /// A new, empty queue of the client `rk`. The handle must be dropped before the client
    /// is destroyed.
    pub(crate) fn new(rk: *mut rd::rd_kafka_t) -> Option<Self> {
        SignalledQueue::new(rk, AtomicWaker::new()).map(Self)
    }

    /// Sends the records of a partition of `rk` here rather than to the main queue. Call it
    /// before the partition is assigned (librdkafka keeps a forward set by the application);
    /// doing it again is harmless.
    pub(crate) fn forward(&self, rk: *mut rd::rd_kafka_t, topic: &str, partition: i32) -> bool {
        let Ok(topic) = CString::new(topic) else {
            return false;
        };
        // SAFETY: `rk` is live; the partition's queue handle is released once forwarded.
        unsafe {
            let Some(source) = NonNull::new(rd::rd_kafka_queue_get_partition(
                rk,
                topic.as_ptr(),
                partition,
            )) else {
                return false;
            };
            rd::rd_kafka_queue_forward(source.as_ptr(), self.0.as_ptr());
            rd::rd_kafka_queue_destroy(source.as_ptr());
        }
        true
    }

    /// Takes up to `max` (at most [`BATCH`]) of the records the queue holds, without
    /// waiting, and hands each to `each` in order. Records of partitions revoked meanwhile
    /// are dropped by librdkafka; errors it reports in place of a record go to `error`.
    pub(crate) fn take(
        &self,
        max: usize,
        mut each: impl FnMut(&Record),
        mut error: impl FnMut(&str),
    ) -> usize {
        let mut taken = [ptr::null_mut::<rd::rd_kafka_message_t>(); BATCH];
        // SAFETY: the array has room for `max.min(BATCH)` pointers.
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.0.as_ptr(),
                0,
                taken.as_mut_ptr(),
                max.clamp(1, BATCH),
            )
        };
        let got = usize::try_from(got).unwrap_or(0);
        // Each record owns its message from here on, so a panic in `each` frees the rest.
        let records: Vec<Record> = taken[..got]
            .iter()
            .filter_map(|&message| NonNull::new(message).map(Record::owning))
            .collect();
        let mut handed = 0;
        for mut record in records {
            match record.error() {
                None => {
                    // Parsed just before use, not for the whole batch first: librdkafka
                    // allocates for the headers, and this way its allocations are served
                    // from what the last record's just freed.
                    record.read_headers();
                    each(&record);
                    handed += 1;
                }
                Some(message) => error(&message),
            }
        }
        handed
    }

    /// Ready once the queue holds something; otherwise the task is woken when it does.
    pub(crate) fn poll_nonempty(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.signal().register(cx.waker());
        // Checked after registering, so an arrival in between wakes.
        if self.0.len() > 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One fetched record, read in place and freed on drop.
pub(crate) struct Record {
    message: NonNull<rd::rd_kafka_message_t>,
    /// Set by `read_headers`, before the record is handed out.
    headers: Option<RecordHeaders>,
}

impl Record {
    fn owning(message: NonNull<rd::rd_kafka_message_t>) -> Self {
        Self {
            message,
            headers: None,
        }
    }

    /// Has librdkafka parse the headers, which then live as long as the message.
    fn read_headers(&mut self) {
        let mut headers = ptr::null_mut();
        // SAFETY: a message taken from the queue and not freed yet.
        let found = unsafe { rd::rd_kafka_message_headers(self.message.as_ptr(), &mut headers) };
        self.headers = (found == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| NonNull::new(headers).map(RecordHeaders))
            .flatten();
    }

    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: owned by `self` until it drops.
        unsafe { self.message.as_ref() }
    }

    /// What librdkafka reports in place of a record (a fetch error, say), if it is not one.
    fn error(&self) -> Option<String> {
        let raw = self.raw();
        if raw.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: librdkafka returns a static string for every code.
        let code = unsafe { CStr::from_ptr(rd::rd_kafka_err2str(raw.err)) };
        let detail = bytes(raw.payload.cast_const().cast(), raw.len).unwrap_or_default();
        Some(format!(
            "{}: {}",
            code.to_string_lossy(),
            String::from_utf8_lossy(detail)
        ))
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // SAFETY: owned by `self`; its headers go with it.
        unsafe { rd::rd_kafka_message_destroy(self.message.as_ptr()) }
    }
}

/// A slice of `len` bytes at `data`, or `None` for a null pointer.
fn bytes<'a>(data: *const u8, len: usize) -> Option<&'a [u8]> {
    // SAFETY: librdkafka's pointer and length of one buffer, alive as long as its message.
    (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data, len) })
}

impl rdkafka::Message for Record {
    type Headers = RecordHeaders;

    fn key(&self) -> Option<&[u8]> {
        let raw = self.raw();
        bytes(raw.key.cast_const().cast(), raw.key_len)
    }

    fn payload(&self) -> Option<&[u8]> {
        let raw = self.raw();
        bytes(raw.payload.cast_const().cast(), raw.len)
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let raw = self.raw();
        let (data, len) = (raw.payload.cast::<u8>(), raw.len);
        // SAFETY: the caller's promise (the trait's contract); the buffer is this record's.
        (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(data, len) })
    }

    fn topic(&self) -> &str {
        // SAFETY: a record's topic handle and its name live as long as the record.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.raw().rkt)) };
        // Kafka allows only ASCII letters, digits, '.', '_' and '-' in topic names.
        name.to_str().unwrap_or_default()
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn timestamp(&self) -> Timestamp {
        use rd::rd_kafka_timestamp_type_t as Type;
        let mut kind = Type::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message.
        let at = unsafe { rd::rd_kafka_message_timestamp(self.message.as_ptr(), &mut kind) };
        match kind {
            _ if at == -1 => Timestamp::NotAvailable,
            Type::RD_KAFKA_TIMESTAMP_CREATE_TIME => Timestamp::CreateTime(at),
            Type::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => Timestamp::LogAppendTime(at),
            Type::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&RecordHeaders> {
        self.headers.as_ref()
    }
}

/// The headers of a [`Record`], parsed by librdkafka and owned by the record's message.
pub(crate) struct RecordHeaders(NonNull<rd::rd_kafka_headers_t>);

/// The name given to a header whose name is not UTF-8 (its value is kept).
const NOT_UTF8_NAME: &str = "\u{fffd}";

impl Headers for RecordHeaders {
    fn count(&self) -> usize {
        // SAFETY: alive as long as the record that holds them.
        unsafe { rd::rd_kafka_header_cnt(self.0.as_ptr()) }
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0);
        // SAFETY: as `count`; the pointers returned live as long as the headers.
        let found = unsafe {
            rd::rd_kafka_header_get_all(self.0.as_ptr(), idx, &mut name, &mut value, &mut size)
        };
        if found != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka keeps header names NUL-terminated.
        let name = unsafe { CStr::from_ptr(name) };
        Some(Header {
            key: name.to_str().unwrap_or(NOT_UTF8_NAME),
            value: bytes(value.cast(), size),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Header, Headers as _, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

    use super::*;

    struct Woken(AtomicBool);

    impl futures::task::ArcWake for Woken {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.store(true, Ordering::SeqCst);
        }
    }

    type Seen = (i32, i64, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

    fn seen(record: &Record) -> Seen {
        let headers = record.headers().map_or_else(Vec::new, |h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        });
        (
            record.partition(),
            record.offset(),
            record.key().map(<[u8]>::to_vec),
            record.payload().unwrap_or_default().to_vec(),
            headers,
        )
    }

    async fn produce(producer: &FutureProducer, partition: i32, key: Option<&str>, body: &str) {
        let headers = OwnedHeaders::new().insert(Header {
            key: "x-event-name",
            value: Some("created"),
        });
        let mut record = FutureRecord::to("t")
            .partition(partition)
            .payload(body)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
    }

    #[tokio::test]
    async fn forwarded_partitions_are_read_in_batches_and_wake_the_reader() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        produce(&producer, 0, Some("a"), "one").await;
        produce(&producer, 1, None, "two").await;
        produce(&producer, 0, Some("b"), "three").await;

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "records-test")
            .create()
            .unwrap();
        let queue = RecordQueue::new(consumer.client().native_ptr()).expect("a queue");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..2 {
            assert!(queue.forward(consumer.client().native_ptr(), "t", partition));
            assignment
                .add_partition_offset("t", partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();

        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while records.len() < 3 {
            assert!(Instant::now() < deadline, "only {records:?}");
            assert!(
                consumer.poll(Duration::ZERO).is_none(),
                "no record on the main queue"
            );
            queue.take(BATCH, |r| records.push(seen(r)), |e| panic!("{e}"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let header = vec![("x-event-name".to_owned(), b"created".to_vec())];
        let mut of_0: Vec<_> = records.iter().filter(|r| r.0 == 0).cloned().collect();
        assert_eq!(
            of_0.remove(0),
            (0, 0, Some(b"a".to_vec()), b"one".to_vec(), header.clone())
        );
        assert_eq!(
            of_0.remove(0),
            (0, 1, Some(b"b".to_vec()), b"three".to_vec(), header.clone()),
            "in the partition's order"
        );
        assert!(records.contains(&(1, 0, None, b"two".to_vec(), header)));

        // Drained: a reader waiting for the next record is woken by librdkafka's callback.
        assert_eq!(queue.take(BATCH, |_| {}, |e| panic!("{e}")), 0);
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = futures::task::waker(Arc::clone(&woken));
        assert!(
            queue
                .poll_nonempty(&mut Context::from_waker(&waker))
                .is_pending()
        );
        produce(&producer, 1, None, "four").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !woken.0.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "not woken by the arrival");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            queue
                .poll_nonempty(&mut Context::from_waker(&waker))
                .is_ready()
        );
        let mut last = Vec::new();
        queue.take(BATCH, |r| last.push(seen(r)), |e| panic!("{e}"));
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].0, last[0].1, &last[0].3[..]), (1, 1, &b"four"[..]));
        // The queue goes before its client.
        drop(queue);
        drop(consumer);
    }
}
