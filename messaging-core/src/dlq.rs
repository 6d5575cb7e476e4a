//! The dead-letter record of DESIGN §3: the same JSON on every broker, versioned.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::rfc3339;
use crate::error::FailureKind;
use crate::message::{Headers, Key, Message, OutgoingMessage, header};

/// The current record version.
pub const RECORD_VERSION: u32 = 1;

/// Header set on every dead-letter record message.
pub const DLQ_HEADER: &str = "x-messaging-dlq";

/// The largest DLQ record the runtime writes by default: under Kafka's default limit of
/// 1 000 000 bytes per message, so that a record is accepted by every broker's defaults.
/// A record that would be larger keeps only the start of the original body (see
/// [`OriginalMessage::truncated`]); a record that cannot be written would stall its lane.
pub const MAX_RECORD_BYTES: usize = 900 * 1024;

/// How much of a body a truncated record keeps: base64 grows 4/3, so a quarter of the limit
/// leaves room for everything else.
fn truncated_body_bytes(limit: usize) -> usize {
    limit / 4
}

/// The default dead-letter topic of `topic`.
pub fn default_dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// The dead-letter topic of messages from `topic`: the handler's own (`dlq = "…"`), else the
/// global one of the configuration (`MESSAGING_DLQ_TOPIC`, where `{topic}` stands for
/// `topic`), else `<topic>.dlq`.
pub fn resolve_dlq_topic(topic: &str, handler: Option<&str>, global: Option<&str>) -> String {
    match (handler, global) {
        (Some(own), _) => own.to_owned(),
        (None, Some(global)) => global.replace("{topic}", topic),
        (None, None) => default_dlq_topic(topic),
    }
}

/// A message that failed for good, with why and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// Record format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The message as it arrived.
    pub original: OriginalMessage,
    /// The last failure.
    pub error: RecordedError,
    /// Attempts made in all, earlier deliveries included.
    pub attempts: u32,
    /// When the first attempt failed.
    #[serde(with = "rfc3339")]
    pub first_failure_at: DateTime<Utc>,
    /// When the last attempt failed.
    #[serde(with = "rfc3339")]
    pub last_failure_at: DateTime<Utc>,
    /// The handler that failed (`process_payment`, `OrderEvents::on_paid`).
    pub handler: String,
    /// Its group.
    pub group: String,
    /// The event name, when the message had one.
    #[serde(default)]
    pub event_name: Option<String>,
    /// The service that dead-lettered it.
    #[serde(default)]
    pub source: String,
    /// The message's trace id.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// When the record was written.
    #[serde(with = "rfc3339")]
    pub dead_lettered_at: DateTime<Utc>,
    /// The record's own id (a UUID v7), for `dlq replay --id`; absent in records written
    /// before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// How many times the message was replayed from a DLQ before this record was written.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replays: u32,
    /// After a replay: the failure that first dead-lettered the message (`error` is the
    /// latest one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<RecordedError>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The failure that first dead-lettered a message, carried across replays in the
/// [`header::FIRST_FAILURE`] header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstFailure {
    /// When the first attempt failed.
    #[serde(with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// What failed then.
    #[serde(flatten)]
    pub error: RecordedError,
}

impl FirstFailure {
    /// What a replayed message says of its first failure, if it says anything readable.
    pub fn of(message: &Message) -> Option<Self> {
        serde_json::from_str(message.header(header::FIRST_FAILURE)?).ok()
    }
}

/// How many times a message was replayed (its [`header::REPLAYED`] header; 0 if never).
pub fn replays_of(message: &Message) -> u32 {
    message
        .header(header::REPLAYED)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The original message inside a [`DeadLetterRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OriginalMessage {
    /// Topic it arrived on.
    pub topic: String,
    /// Its key: UTF-8 text as is, anything else in base64 (then `key_encoding` is
    /// `"base64"`).
    #[serde(default)]
    pub key: Option<String>,
    /// `"base64"` when `key` is base64; absent for UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_encoding: Option<String>,
    /// The body: UTF-8 text as is, anything else in base64 (then `encoding` is `"base64"`).
    pub payload: String,
    /// `"base64"` when `payload` is base64; absent for UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Its headers.
    #[serde(default)]
    pub headers: Headers,
    /// The broker's position (`partition 2 offset 1187`, `stream id …`, `delivery tag …`).
    pub position: String,
    /// Set when the record would have exceeded the size limit: `payload` then holds only the
    /// start of the body (base64) and `size` its full length; headers may be left out too.
    /// Such a record cannot be replayed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The full body length, when `truncated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

/// Why a record cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The payload says it is base64 but is not.
    #[error("the payload is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Only the start of the body was kept.
    #[error("the record keeps only the start of a {size}-byte body; it cannot be replayed")]
    Truncated {
        /// The full body length.
        size: usize,
    },
}

impl OriginalMessage {
    /// Captures a delivered message.
    pub fn capture(message: &Message) -> Self {
        let (payload, encoding) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (BASE64.encode(&message.payload), Some("base64".to_owned())),
        };
        Self::with_body(message, payload, encoding)
    }

    fn with_body(message: &Message, payload: String, encoding: Option<String>) -> Self {
        let (key, key_encoding) = match message.key.as_ref().map(|key| (key.as_str(), key)) {
            None => (None, None),
            Some((Some(text), _)) => (Some(text.to_owned()), None),
            Some((None, key)) => (
                Some(BASE64.encode(key.as_bytes())),
                Some("base64".to_owned()),
            ),
        };
        Self {
            topic: message.topic.to_string(),
            key,
            key_encoding,
            payload,
            encoding,
            headers: message.headers.clone(),
            position: message.position.to_string(),
            truncated: false,
            size: None,
        }
    }

    /// Captures a delivered message for a record of at most about `limit` bytes. A body
    /// longer than that can never fit, so only its start is copied (as
    /// [`DeadLetterRecord::to_message_within`] would keep it): a 10 MB message is not copied
    /// and encoded whole only to be cut down.
    pub fn capture_within(message: &Message, limit: usize) -> Self {
        if message.payload.len() <= limit {
            return Self::capture(message);
        }
        let mut captured = Self::with_body(message, String::new(), None);
        captured.keep_start(&message.payload, truncated_body_bytes(limit));
        captured
    }

    /// Keeps only the first `keep` bytes of the body, in base64, and marks the record.
    fn truncate(&mut self, keep: usize) {
        let body = self
            .payload_bytes()
            .unwrap_or_else(|_| Bytes::from(self.payload.clone().into_bytes()));
        self.keep_start(&body, keep);
    }

    fn keep_start(&mut self, body: &[u8], keep: usize) {
        self.size = Some(body.len());
        self.payload = BASE64.encode(&body[..keep.min(body.len())]);
        self.encoding = Some("base64".to_owned());
        self.truncated = true;
    }

    /// The original key's bytes.
    pub fn key_bytes(&self) -> Result<Option<Key>, base64::DecodeError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        Ok(Some(match self.key_encoding.as_deref() {
            Some("base64") => Key::from(BASE64.decode(key)?),
            _ => Key::from(key.as_str()),
        }))
    }

    /// The original body bytes.
    pub fn payload_bytes(&self) -> Result<Bytes, base64::DecodeError> {
        match self.encoding.as_deref() {
            Some("base64") => BASE64.decode(&self.payload).map(Bytes::from),
            _ => Ok(Bytes::from(self.payload.clone().into_bytes())),
        }
    }

    /// The message to re-publish on replay: same topic, key, body and headers, the attempt
    /// count reset and the replay marked (as a first replay; [`DeadLetterRecord::to_replay`]
    /// counts the record's earlier ones).
    pub fn to_replay(&self) -> Result<OutgoingMessage, ReplayError> {
        if self.truncated {
            return Err(ReplayError::Truncated {
                size: self.size.unwrap_or_default(),
            });
        }
        let mut headers = self.headers.clone();
        headers.remove(header::ATTEMPT);
        headers.remove(header::RETRY_DUE);
        headers.remove(header::ORIGINAL_TOPIC);
        headers.insert(header::REPLAYED.to_owned(), "1".to_owned());
        Ok(OutgoingMessage {
            topic: self.topic.clone(),
            key: self.key_bytes()?,
            payload: self.payload_bytes()?,
            headers,
        })
    }
}

/// The error inside a [`DeadLetterRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedError {
    /// `handler`, `schema`, `decode`, `panic`, `timeout` or `too_large`.
    pub kind: FailureKind,
    /// The error message.
    pub message: String,
}

impl DeadLetterRecord {
    /// The message to re-publish on replay ([`OriginalMessage::to_replay`]), carrying the
    /// replay count (this record's `replays` + 1) and the first failure, so that a record
    /// written if it fails again says both.
    pub fn to_replay(&self) -> Result<OutgoingMessage, ReplayError> {
        let mut out = self.original.to_replay()?;
        out.headers
            .insert(header::REPLAYED, (self.replays + 1).to_string());
        let first = FirstFailure {
            at: self.first_failure_at,
            error: self
                .first_error
                .clone()
                .unwrap_or_else(|| self.error.clone()),
        };
        out.headers.insert(
            header::FIRST_FAILURE,
            serde_json::to_string(&first).expect("a failure always serializes"),
        );
        Ok(out)
    }

    /// The record as the message to publish on `dlq_topic`, within [`MAX_RECORD_BYTES`].
    pub fn to_message(&self, dlq_topic: &str) -> OutgoingMessage {
        self.to_message_within(dlq_topic, MAX_RECORD_BYTES)
    }

    /// The record as the message to publish on `dlq_topic`, at most about `limit` bytes: a
    /// larger one keeps only the start of the original body, then drops the headers and
    /// shortens the error message, rather than be refused by the broker for ever.
    pub fn to_message_within(&self, dlq_topic: &str, limit: usize) -> OutgoingMessage {
        let mut payload = serde_json::to_vec(self).expect("a DLQ record always serializes");
        if payload.len() > limit {
            let mut record = self.clone();
            record.original.truncate(truncated_body_bytes(limit));
            payload = serde_json::to_vec(&record).expect("a DLQ record always serializes");
            if payload.len() > limit {
                record.original.headers.clear();
                let mut end = record.error.message.len().min(limit / 8);
                while !record.error.message.is_char_boundary(end) {
                    end -= 1;
                }
                record.error.message.truncate(end);
                payload = serde_json::to_vec(&record).expect("a DLQ record always serializes");
            }
        }
        let mut message = OutgoingMessage::new(dlq_topic, payload).with_header(DLQ_HEADER, "1");
        // The record's own key is the original's, so that it can be found by it; a garbled
        // one (never written by the framework) is left out rather than failing the write.
        message.key = self.original.key_bytes().ok().flatten();
        if let Some(name) = &self.event_name {
            message.headers.insert(header::EVENT_NAME, name.clone());
        }
        if let Some(trace) = &self.trace_id {
            message.headers.insert(header::TRACE_ID, trace.clone());
        }
        message
    }

    /// Parses a record from a DLQ message body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handlers_dlq_wins_then_the_global_one_then_the_default() {
        assert_eq!(resolve_dlq_topic("orders", None, None), "orders.dlq");
        assert_eq!(
            resolve_dlq_topic("orders", None, Some("{topic}.failed")),
            "orders.failed"
        );
        assert_eq!(
            resolve_dlq_topic("orders", None, Some("dead-letters")),
            "dead-letters"
        );
        assert_eq!(
            resolve_dlq_topic("orders", Some("payments.dlq"), Some("dead-letters")),
            "payments.dlq"
        );
    }

    fn record(payload: &[u8]) -> DeadLetterRecord {
        let mut message = Message::new("orders.created", payload.to_vec());
        message.headers.insert("x-event-name", "order.created");
        let now = Utc::now();
        DeadLetterRecord {
            version: RECORD_VERSION,
            original: OriginalMessage::capture(&message),
            error: RecordedError {
                kind: FailureKind::Handler,
                message: "boom".into(),
            },
            attempts: 4,
            first_failure_at: now,
            last_failure_at: now,
            handler: "process_payment".into(),
            group: "order-service".into(),
            event_name: Some("order.created".into()),
            source: "svc".into(),
            trace_id: None,
            dead_lettered_at: now,
            id: Some("0190c0e2-0000-7000-8000-000000000000".into()),
            replays: 0,
            first_error: None,
        }
    }

    #[test]
    fn a_replay_counts_and_keeps_the_first_failure() {
        let mut r = record(b"{}");
        r.replays = 2;
        let replay = r.to_replay().unwrap();
        assert_eq!(replay.headers.get(header::REPLAYED), Some("3"));
        let mut back = Message::new("orders.created", &b"{}"[..]);
        back.headers = replay.headers.clone();
        assert_eq!(replays_of(&back), 3);
        let first = FirstFailure::of(&back).unwrap();
        assert_eq!(first.error.message, "boom");
        assert_eq!(first.at, r.first_failure_at);
        // Old records, without the new fields, still parse.
        let mut json = serde_json::to_value(&r).unwrap();
        for field in ["id", "replays", "first_error"] {
            json.as_object_mut().unwrap().remove(field);
        }
        let old = DeadLetterRecord::from_bytes(json.to_string().as_bytes()).unwrap();
        assert_eq!((old.id, old.replays, old.first_error), (None, 0, None));
    }

    #[test]
    fn oversized_records_keep_the_start_of_the_body_and_refuse_replay() {
        // NUL bytes grow six-fold as JSON escapes: the case that once stalled a Kafka lane.
        let body = vec![0u8; 300_000];
        let r = record(&body);
        let message = r.to_message_within("orders.created.dlq", 100_000);
        assert!(
            message.payload.len() <= 100_000,
            "{} bytes",
            message.payload.len()
        );
        let back = DeadLetterRecord::from_bytes(&message.payload).unwrap();
        assert!(back.original.truncated);
        assert_eq!(back.original.size, Some(300_000));
        let kept = back.original.payload_bytes().unwrap();
        assert!(!kept.is_empty() && body.starts_with(&kept));
        assert!(matches!(
            back.original.to_replay(),
            Err(ReplayError::Truncated { size: 300_000 })
        ));
        // Small records are untouched and say nothing of truncation.
        let small = record(b"{}").to_message("t.dlq");
        assert!(!String::from_utf8_lossy(&small.payload).contains("truncated"));
    }

    #[test]
    fn text_payload_is_kept_as_text() {
        let r = record(br#"{"order_id":42}"#);
        assert_eq!(r.original.payload, r#"{"order_id":42}"#);
        assert_eq!(r.original.encoding, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["error"]["kind"], "handler");
        assert_eq!(json["version"], 1);
        assert!(json["original"].get("encoding").is_none());
    }

    #[test]
    fn binary_payload_is_base64_and_replays_byte_for_byte() {
        let bytes = [0xff, 0xfe, 0x00, 0x41];
        let r = record(&bytes);
        assert_eq!(r.original.encoding.as_deref(), Some("base64"));
        let back = DeadLetterRecord::from_bytes(&serde_json::to_vec(&r).unwrap()).unwrap();
        let replay = back.original.to_replay().unwrap();
        assert_eq!(&replay.payload[..], &bytes);
        assert_eq!(replay.topic, "orders.created");
        assert_eq!(replay.headers.get(header::REPLAYED), Some("1"));
    }

    #[test]
    fn a_body_over_the_limit_is_captured_as_the_record_would_keep_it() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut message = Message::new("orders.created", body.clone());
        message.key = Some("42".into());
        message.headers.insert("x-event-name", "order.created");
        let limit = 100_000;
        let captured = OriginalMessage::capture_within(&message, limit);
        let mut whole = OriginalMessage::capture(&message);
        whole.truncate(truncated_body_bytes(limit));
        assert_eq!(captured, whole);
        assert!(captured.truncated);
        assert_eq!(captured.size, Some(body.len()));
        assert_eq!(captured.key.as_deref(), Some("42"));
        assert_eq!(captured.headers, message.headers);
        // Within the limit, nothing changes.
        let small = Message::new("t", &b"{}"[..]);
        assert_eq!(
            OriginalMessage::capture_within(&small, limit),
            OriginalMessage::capture(&small)
        );
    }
}
