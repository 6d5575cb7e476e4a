//! The dead-letter record of DESIGN §3: the same JSON on every broker, versioned.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::rfc3339;
use crate::error::FailureKind;
use crate::message::{Headers, Message, OutgoingMessage, header};

/// The current record version.
pub const RECORD_VERSION: u32 = 1;

/// Header set on every dead-letter record message.
pub const DLQ_HEADER: &str = "x-messaging-dlq";

/// The default dead-letter topic of `topic`.
pub fn default_dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
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
}

/// The original message inside a [`DeadLetterRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OriginalMessage {
    /// Topic it arrived on.
    pub topic: String,
    /// Its key.
    #[serde(default)]
    pub key: Option<String>,
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
}

impl OriginalMessage {
    /// Captures a delivered message.
    pub fn capture(message: &Message) -> Self {
        let (payload, encoding) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (BASE64.encode(&message.payload), Some("base64".to_owned())),
        };
        Self {
            topic: message.topic.clone(),
            key: message.key.clone(),
            payload,
            encoding,
            headers: message.headers.clone(),
            position: message.position.to_string(),
        }
    }

    /// The original body bytes.
    pub fn payload_bytes(&self) -> Result<Bytes, base64::DecodeError> {
        match self.encoding.as_deref() {
            Some("base64") => BASE64.decode(&self.payload).map(Bytes::from),
            _ => Ok(Bytes::from(self.payload.clone().into_bytes())),
        }
    }

    /// The message to re-publish on replay: same topic, key, body and headers, the attempt
    /// count reset and the replay marked.
    pub fn to_replay(&self) -> Result<OutgoingMessage, base64::DecodeError> {
        let mut headers = self.headers.clone();
        headers.remove(header::ATTEMPT);
        headers.insert(header::REPLAYED.to_owned(), "1".to_owned());
        Ok(OutgoingMessage {
            topic: self.topic.clone(),
            key: self.key.clone(),
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
    /// The record as the message to publish on `dlq_topic`.
    pub fn to_message(&self, dlq_topic: &str) -> OutgoingMessage {
        let payload = serde_json::to_vec(self).expect("a DLQ record always serializes");
        let mut message = OutgoingMessage::new(dlq_topic, payload).with_header(DLQ_HEADER, "1");
        message.key = self.original.key.clone();
        if let Some(name) = &self.event_name {
            message
                .headers
                .insert(header::EVENT_NAME.into(), name.clone());
        }
        if let Some(trace) = &self.trace_id {
            message
                .headers
                .insert(header::TRACE_ID.into(), trace.clone());
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

    fn record(payload: &[u8]) -> DeadLetterRecord {
        let mut message = Message::new("orders.created", payload.to_vec());
        message
            .headers
            .insert("x-event-name".into(), "order.created".into());
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
        }
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
        assert_eq!(
            replay.headers.get(header::REPLAYED).map(String::as_str),
            Some("1")
        );
    }
}
