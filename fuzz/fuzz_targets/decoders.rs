//! Every decoder a message from outside reaches, on one fuzzed message: the event name, the
//! attempt header, whole-body JSON, the envelope (standard and foreign fields) and the
//! dead-letter record, plus the capture of the message into a record and back.
//!
//! Input: optional header lines, a blank line, then the body, so seeds stay readable:
//!
//! ```text
//! x-event-name: user.created
//! key: 42
//!
//! {"id":"…","name":"user.created","data":{}}
//! ```
//!
//! Without a blank line the whole input is the body. Header names are turned into text
//! lossily; values and the key keep their bytes, as every broker crate keeps them. A `key:`
//! line sets the message key.
//!
//! Run with: cargo +nightly fuzz run decoders fuzz/corpus/decoders fuzz/seeds/decoders

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use messaging_core::dlq::OriginalMessage;
use messaging_core::envelope::event_name;
use messaging_core::message::header;
use messaging_core::{
    DeadLetterRecord, EnvelopeFields, Event, FailureKind, HandlerError, Headers, Key, Message, Position,
    decode_event, decode_json,
};
use serde::Deserialize;
use serde_json::Value;

const FOREIGN: EnvelopeFields = EnvelopeFields {
    name: "type",
    data: "payload",
};

#[derive(Debug, Deserialize)]
#[allow(dead_code)] // only decoded
struct Order {
    order_id: u64,
    total: f64,
}

fn message(data: &[u8]) -> Message {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&[][..], data),
    };
    let mut headers = Headers::new();
    let mut key = None;
    for line in head.split(|&b| b == b'\n') {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], line[at + 1..].trim_ascii_start()),
            None => (line, &[][..]),
        };
        if name == b"key" {
            key = Some(Key::from(value));
        } else {
            headers.insert(String::from_utf8_lossy(name).into_owned(), value);
        }
    }
    Message {
        topic: "fuzz".into(),
        key,
        payload: Bytes::copy_from_slice(body),
        headers,
        position: Position::StreamId("1-0".to_owned()),
    }
}

/// A bad payload fails as `decode` or `schema`, never retried.
fn check_failure(error: &HandlerError) {
    assert!(
        matches!(error.kind(), FailureKind::Decode | FailureKind::Schema),
        "a decoder failed with kind {}",
        error.kind()
    );
    assert!(!error.is_retryable(), "a bad payload was marked retryable");
}

fuzz_target!(|data: &[u8]| {
    let message = message(data);

    let _ = message.previous_attempts();
    let _ = message.ordering_key();
    let standard_name = event_name(&message, &EnvelopeFields::STANDARD);
    if let Some(name) = message.header(header::EVENT_NAME) {
        assert_eq!(
            standard_name.as_deref(),
            Some(name),
            "the header names the event"
        );
    }
    let _ = event_name(&message, &FOREIGN);

    if let Err(e) = decode_json::<Value>(&message) {
        check_failure(&e);
    }
    if let Err(e) = decode_json::<Order>(&message) {
        check_failure(&e);
    }
    for fields in [EnvelopeFields::STANDARD, FOREIGN] {
        match decode_event::<Value>(&message, &fields) {
            Ok(event) => {
                // What decoded encodes and decodes to itself.
                let again = Message::new("fuzz", serde_json::to_vec(&event).unwrap());
                let back: Event<Value> = decode_event(&again, &EnvelopeFields::STANDARD)
                    .expect("a re-encoded event decodes");
                assert_eq!(back, event);
            }
            Err(e) => check_failure(&e),
        }
        if let Err(e) = decode_event::<Order>(&message, &fields) {
            check_failure(&e);
        }
    }

    // The body as a DLQ record (what `consumer dlq list/replay` parse).
    if let Ok(record) = DeadLetterRecord::from_bytes(&message.payload) {
        let _ = record.original.to_replay();
        let encoded = serde_json::to_vec(&record).unwrap();
        assert_eq!(DeadLetterRecord::from_bytes(&encoded).unwrap(), record);
    }

    // The message captured into a record gives its bytes and headers back.
    let original = OriginalMessage::capture(&message);
    let json = serde_json::to_vec(&original).unwrap();
    let parsed: OriginalMessage = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed.payload_bytes().unwrap(), message.payload);
    let replay = parsed.to_replay().unwrap();
    assert_eq!(replay.payload, message.payload);
    assert_eq!(replay.key, message.key);
    assert!(!replay.headers.contains_key(header::ATTEMPT));
});
