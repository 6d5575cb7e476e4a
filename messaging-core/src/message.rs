//! The raw message as brokers carry it: topic, key, payload bytes, headers and the broker's
//! position of it.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use bytes::Bytes;

pub use crate::key::Key;

/// Header names the framework writes and reads. Every broker carries them natively (Kafka
/// headers, AMQP headers, Redis stream fields), so routing never needs to parse a body.
pub mod header {
    /// The event name of an enveloped message (`user.created`).
    pub const EVENT_NAME: &str = "x-event-name";
    /// The envelope id (UUID v7).
    pub const EVENT_ID: &str = "x-event-id";
    /// The trace id, propagated from the incoming message or request.
    pub const TRACE_ID: &str = "x-trace-id";
    /// How many attempts were already made on this message by earlier deliveries.
    pub const ATTEMPT: &str = "x-messaging-attempt";
    /// The message key, for brokers that have no native key (RabbitMQ, Redis).
    pub const KEY: &str = "x-message-key";
    /// Set on a message re-published from a dead-letter queue: how many times it has been
    /// replayed (1 after the first replay).
    pub const REPLAYED: &str = "x-messaging-replayed";
    /// On a message waiting in a retry topic: when it is due (RFC 3339).
    pub const RETRY_DUE: &str = "x-retry-due";
    /// On a message in a retry topic: the topic it was first published to.
    pub const ORIGINAL_TOPIC: &str = "x-messaging-original-topic";
    /// Set on a replayed message: the failure that first dead-lettered it (JSON:
    /// `{"at":…,"kind":…,"message":…}`), kept by the record written if it fails again.
    pub const FIRST_FAILURE: &str = "x-messaging-first-failure";
    /// The key an idempotent handler runs at most once for, when the publisher gave one
    /// (otherwise the envelope id, [`EVENT_ID`], is used).
    pub const IDEMPOTENCY_KEY: &str = "x-idempotency-key";
    /// On a request and its replies: the id that matches a reply to its request (on
    /// RabbitMQ the AMQP property `correlation_id`).
    pub const CORRELATION_ID: &str = "x-correlation-id";
    /// On a request: where its replies go, an address of the requester's broker (on
    /// RabbitMQ the AMQP property `reply_to`).
    pub const REPLY_TO: &str = "x-reply-to";
    /// On a request: when the requester stops waiting (RFC 3339).
    pub const DEADLINE: &str = "x-deadline";
    /// On a reply: `ok`, `error`, `chunk` or `end` (see [`crate::reply::ReplyKind`]).
    pub const REPLY_KIND: &str = "x-reply-kind";
}

pub use crate::headers::Headers;

/// Where a broker holds a message; written into DLQ records and offered to handlers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// Not known (a message built by hand).
    #[default]
    Unknown,
    /// An offset in a single log (the memory broker).
    Offset(u64),
    /// A Kafka partition and offset.
    Partition {
        /// The partition.
        partition: i32,
        /// The record's offset in it.
        offset: i64,
    },
    /// A Redis stream entry id.
    StreamId(String),
    /// An AMQP delivery tag (valid on the channel that delivered it).
    DeliveryTag(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("unknown"),
            Self::Offset(offset) => write!(f, "offset {offset}"),
            Self::Partition { partition, offset } => {
                write!(f, "partition {partition} offset {offset}")
            }
            Self::StreamId(id) => write!(f, "stream id {id}"),
            Self::DeliveryTag(tag) => write!(f, "delivery tag {tag}"),
        }
    }
}

/// A topic name that messages share: cloning it is a reference count, not a copy. Compares
/// and reads as the `str` it holds.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both share one string (then they are equal without comparing bytes).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for TopicName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TopicName {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl From<String> for TopicName {
    fn from(name: String) -> Self {
        Self(name.into())
    }
}

impl From<&String> for TopicName {
    fn from(name: &String) -> Self {
        Self(name.as_str().into())
    }
}

impl PartialEq<str> for TopicName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for TopicName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for TopicName {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<TopicName> for str {
    fn eq(&self, other: &TopicName) -> bool {
        *self == *other.0
    }
}

impl PartialEq<TopicName> for &str {
    fn eq(&self, other: &TopicName) -> bool {
        **self == *other.0
    }
}

impl PartialEq<TopicName> for String {
    fn eq(&self, other: &TopicName) -> bool {
        **self == *other.0
    }
}

/// The names of the topics a consumer reads, made once when it subscribes, so that the
/// messages it receives share their topic's string instead of each allocating a copy. A topic
/// not among them (a broker delivering something unexpected) gets a string of its own.
#[derive(Clone, Debug, Default)]
pub struct TopicNames(Vec<TopicName>);

impl TopicNames {
    /// The names of `topics`.
    pub fn new<S: AsRef<str>>(topics: impl IntoIterator<Item = S>) -> Self {
        Self(topics.into_iter().map(|t| t.as_ref().into()).collect())
    }

    /// The name, when there is exactly one: a consumer of a single topic, subscribed by its
    /// exact name, need not read each record's topic to name it.
    pub fn only(&self) -> Option<&TopicName> {
        match &self.0[..] {
            [only] => Some(only),
            _ => None,
        }
    }

    /// The shared name of `topic`.
    pub fn get(&self, topic: &str) -> TopicName {
        self.0
            .iter()
            .find(|name| **name == *topic)
            .cloned()
            .unwrap_or_else(|| topic.into())
    }
}

/// A message as delivered by a broker. Built with [`Message::new`] and the `with_*` methods
/// (a broker crate, or a test).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The topic (Kafka topic, AMQP routing key, Redis stream) it was published to. Shared:
    /// a broker hands every message of a topic the same string, so none copies it, and the
    /// dispatcher's comparisons read memory that is already in the cache.
    pub topic: TopicName,
    /// The key, if the publisher set one: bytes, read as text with [`Message::key_str`].
    pub key: Option<Key>,
    /// The body, exactly as published.
    pub payload: Bytes,
    /// Headers, framework ones included.
    pub headers: Headers,
    /// Where the broker holds it.
    pub position: Position,
    /// A token of the broker that delivered it, telling this delivery apart from any other
    /// for its acknowledgement (on RabbitMQ, where delivery tags start again with each
    /// channel); 0 where the position is enough.
    pub receipt: u64,
}

impl Message {
    /// A message on `topic` with this payload and nothing else.
    pub fn new(topic: impl Into<TopicName>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Sets the key (text or bytes).
    pub fn with_key(mut self, key: impl Into<Key>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header (its value text or bytes).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets where the broker holds it.
    pub fn with_position(mut self, position: Position) -> Self {
        self.position = position;
        self
    }

    /// Sets the broker's token for its acknowledgement ([`Message::receipt`]).
    pub fn with_receipt(mut self, receipt: u64) -> Self {
        self.receipt = receipt;
        self
    }

    /// A header value as text (`None` when absent or not UTF-8; see [`Headers::get_bytes`]).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The key as text, when there is one and it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_ref().and_then(Key::as_str)
    }

    /// Attempts made by earlier deliveries, from the framework header (never from a
    /// broker-native counter). A missing or garbled header counts as none.
    pub fn previous_attempts(&self) -> u32 {
        parse_attempts(self.header(header::ATTEMPT))
    }

    /// Whether there is a trace id, and the earlier attempts, read in one pass over the
    /// headers: the dispatcher needs both for every message.
    pub(crate) fn delivery_headers(&self) -> DeliveryHeaders {
        let (mut traced, mut attempts, mut retry_due, mut deadline) = (false, None, false, false);
        for (name, value) in &self.headers {
            match name {
                header::TRACE_ID => traced = true,
                header::ATTEMPT => attempts = std::str::from_utf8(value).ok(),
                header::RETRY_DUE => retry_due = true,
                header::DEADLINE => deadline = true,
                _ => {}
            }
        }
        DeliveryHeaders {
            traced,
            previous_attempts: parse_attempts(attempts),
            retry_due,
            deadline,
        }
    }

    /// The key that keeps order: the topic and key (on Kafka, the key within its
    /// partition); without a key, the partition (Kafka) or the topic. Messages with equal
    /// ordering keys are handled one after the other, in order; others concurrently. (Two
    /// keys whose hashes collide are merely ordered together.)
    pub fn ordering_key(&self) -> u64 {
        let mut scope = lane_hash(self.topic.as_bytes());
        if let Position::Partition { partition, .. } = &self.position {
            scope = scope.wrapping_add(u64::from(partition.unsigned_abs()));
        }
        match &self.key {
            Some(key) => scope ^ lane_hash(key.as_bytes()).rotate_left(1),
            None => scope,
        }
    }
}

/// A quick, well-mixed hash of a short string, for picking lanes (not for hash tables that
/// face untrusted keys): eight bytes per multiplication, then a full avalanche.
fn lane_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // murmur3's finalizer: every input bit reaches the low bits the lane is taken from.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What the dispatcher reads from a message's headers before the first attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeliveryHeaders {
    /// Whether it carries a trace id (the attempts that need it look it up).
    pub traced: bool,
    pub previous_attempts: u32,
    /// Whether it came from a retry topic with a due time (looked up when it does).
    pub retry_due: bool,
    /// Whether it is a request with a deadline (looked up when it is).
    pub deadline: bool,
}

fn parse_attempts(header: Option<&str>) -> u32 {
    header.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// A message to publish, built with [`OutgoingMessage::new`] and the `with_*` methods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutgoingMessage {
    /// Destination topic.
    pub topic: String,
    /// Optional key (partitioning on Kafka, a header elsewhere): text or bytes.
    pub key: Option<Key>,
    /// The body.
    pub payload: Bytes,
    /// Headers to send.
    pub headers: Headers,
}

impl OutgoingMessage {
    /// A message for `topic` with this payload.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// Sets the key (text or bytes).
    pub fn with_key(mut self, key: impl Into<Key>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header (its value text or bytes).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(message: &Message, lanes: u64) -> u64 {
        message.ordering_key() % lanes
    }

    #[test]
    fn the_partitions_of_a_topic_get_lanes_of_their_own() {
        for topic in [
            "orders",
            "bench-1764-consume-3",
            "t",
            "a-rather-long-topic-name.v2",
        ] {
            for lanes in [6u64, 16] {
                let mut used: Vec<u64> = (0..6)
                    .map(|partition| {
                        let mut m = Message::new(topic, Vec::<u8>::new());
                        m.position = Position::Partition {
                            partition,
                            offset: 0,
                        };
                        lane(&m, lanes)
                    })
                    .collect();
                used.sort_unstable();
                used.dedup();
                assert_eq!(used.len(), 6, "{topic} on {lanes} lanes");
            }
        }
    }

    #[test]
    fn keys_keep_their_lane_and_spread_over_all_lanes() {
        let keyed = |key: String| {
            let mut m = Message::new("orders", Vec::<u8>::new());
            m.key = Some(key.into());
            m
        };
        let mut per_lane = [0usize; 16];
        for i in 0..16_000 {
            let m = keyed(format!("user-{i}"));
            assert_eq!(lane(&m, 16), lane(&keyed(format!("user-{i}")), 16));
            per_lane[lane(&m, 16) as usize] += 1;
        }
        // 1 000 each on average; a poor mix of the low bits would leave lanes idle.
        assert!(
            per_lane.iter().all(|&n| (850..1150).contains(&n)),
            "{per_lane:?}"
        );
        let other_topic = {
            let mut m = keyed("user-1".into());
            m.topic = "payments".into();
            m
        };
        assert_ne!(
            other_topic.ordering_key(),
            keyed("user-1".into()).ordering_key()
        );
    }

    #[test]
    fn a_key_is_ordered_within_its_partition() {
        let at = |partition, key: Option<&str>| {
            let mut m = Message::new("orders", Vec::<u8>::new());
            m.position = Position::Partition {
                partition,
                offset: 7,
            };
            m.key = key.map(Key::from);
            m.ordering_key()
        };
        assert_eq!(at(1, Some("user-1")), at(1, Some("user-1")));
        assert_ne!(at(1, Some("user-1")), at(1, Some("user-2")));
        assert_ne!(at(1, Some("user-1")), at(2, Some("user-1")));
        assert_ne!(at(1, Some("user-1")), at(1, None));
    }

    #[test]
    fn a_consumers_topics_share_one_string_and_others_get_their_own() {
        let names = TopicNames::new(["orders", "payments"]);
        let (a, b) = (names.get("orders"), names.get("orders"));
        assert!(a.ptr_eq(&b), "one string per known topic");
        assert_eq!(a, "orders");
        let unknown = names.get("audit");
        assert_eq!(unknown, "audit");
        assert!(!unknown.ptr_eq(&names.get("audit")), "not kept");
        assert!(names.only().is_none(), "two topics");
        let one = TopicNames::new(["orders"]);
        assert!(
            one.only()
                .is_some_and(|only| only.ptr_eq(&one.get("orders")))
        );
        assert!(TopicNames::default().only().is_none());
    }
}
