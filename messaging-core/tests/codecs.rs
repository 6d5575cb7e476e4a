//! Property tests of the codecs a hostile broker client can reach: the event envelope (standard
//! and foreign fields), whole-body JSON, the event-name lookup, the attempt header and the
//! dead-letter record. Arbitrary bytes never panic; what the framework encodes decodes to
//! itself.
//!
//! Run with: cargo test -p messaging-core --test codecs
//! (`PROPTEST_CASES=10000` for a longer run.)

use chrono::{DateTime, TimeZone as _, Utc};
use messaging_core::dlq::{DLQ_HEADER, OriginalMessage, RECORD_VERSION, RecordedError};
use messaging_core::message::header;
use messaging_core::{
    DeadLetterRecord, EnvelopeFields, Event, FailureKind, Headers, Key, Message, Position,
    decode_event, decode_json,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The envelope the Node services of the seeds send: `{"type": …, "payload": …}`.
const FOREIGN: EnvelopeFields = EnvelopeFields {
    name: "type",
    data: "payload",
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    user: String,
    total: f64,
    tags: Vec<String>,
    note: Option<String>,
}

// ---- strategies ----------------------------------------------------------------------------

/// Bytes biased towards what breaks decoders: mostly-JSON fragments, invalid UTF-8, NULs.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..512),
        // Valid JSON text with a byte flipped or cut short.
        (
            json_value(),
            any::<prop::sample::Index>(),
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(|(value, at, byte, cut)| {
                let mut bytes = serde_json::to_vec(&value).unwrap();
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    if cut {
                        bytes.truncate(i);
                    } else {
                        bytes[i] = byte;
                    }
                }
                bytes
            }),
        // Envelope-like objects with fields of any type.
        btree_map(
            prop::sample::select(vec![
                "id",
                "name",
                "data",
                "timestamp",
                "source",
                "trace_id",
                "type",
                "payload",
            ]),
            json_value(),
            0..8
        )
        .prop_map(|fields| serde_json::to_vec(&fields).unwrap()),
        // Deeply nested arrays: serde_json's recursion limit, not the stack, must stop them.
        (1usize..4000).prop_map(|depth| {
            let mut bytes = vec![b'['; depth];
            bytes.extend(std::iter::repeat_n(b']', depth));
            bytes
        }),
    ]
}

/// Any JSON value serde_json can write, floats included.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Header names and values as brokers deliver them (any text names, any bytes as values).
fn headers() -> impl Strategy<Value = Headers> {
    btree_map(
        prop_oneof![
            any::<String>(),
            prop::sample::select(vec![
                header::EVENT_NAME.to_owned(),
                header::EVENT_ID.to_owned(),
                header::TRACE_ID.to_owned(),
                header::ATTEMPT.to_owned(),
                header::REPLAYED.to_owned(),
            ]),
        ],
        prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            vec(any::<u8>(), 0..16)
        ],
        0..8,
    )
    .prop_map(Headers::from_iter)
}

/// Instants from year 0 to 9999 (RFC 3339 has four-digit years) with nanoseconds.
fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_167_219_200i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| Utc.timestamp_opt(secs, nanos).unwrap())
}

fn position() -> impl Strategy<Value = Position> {
    prop_oneof![
        Just(Position::Unknown),
        any::<u64>().prop_map(Position::Offset),
        (any::<i32>(), any::<i64>())
            .prop_map(|(partition, offset)| Position::Partition { partition, offset }),
        any::<String>().prop_map(Position::StreamId),
        any::<u64>().prop_map(Position::DeliveryTag),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<String>(),
        prop::option::of(prop_oneof![
            any::<String>().prop_map(Key::from),
            vec(any::<u8>(), 0..24).prop_map(Key::from),
        ]),
        hostile_bytes(),
        headers(),
        position(),
    )
        .prop_map(|(topic, key, payload, headers, position)| {
            let mut message = Message::new(topic, payload)
                .with_headers(headers)
                .with_position(position);
            message.key = key;
            message
        })
}

fn failure_kind() -> impl Strategy<Value = FailureKind> {
    prop::sample::select(vec![
        FailureKind::Handler,
        FailureKind::Schema,
        FailureKind::Decode,
        FailureKind::Panic,
        FailureKind::Timeout,
        FailureKind::TooLarge,
    ])
}

fn event<T: std::fmt::Debug>(data: impl Strategy<Value = T>) -> impl Strategy<Value = Event<T>> {
    (
        any::<u128>(),
        any::<String>(),
        data,
        timestamp(),
        any::<String>(),
        any::<Option<String>>(),
    )
        .prop_map(|(id, name, data, timestamp, source, trace_id)| Event {
            id: Uuid::from_u128(id),
            name,
            data,
            timestamp,
            source,
            trace_id,
        })
}

fn order() -> impl Strategy<Value = Order> {
    (
        any::<u64>(),
        any::<String>(),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        vec(any::<String>(), 0..4),
        any::<Option<String>>(),
    )
        .prop_map(|(order_id, user, total, tags, note)| Order {
            order_id,
            user,
            total,
            tags,
            note,
        })
}

fn record(original: Message) -> impl Strategy<Value = DeadLetterRecord> {
    (
        failure_kind(),
        any::<String>(),
        any::<u32>(),
        (timestamp(), timestamp(), timestamp()),
        (any::<String>(), any::<String>(), any::<String>()),
        (any::<Option<String>>(), any::<Option<String>>()),
    )
        .prop_map(
            move |(
                kind,
                message,
                attempts,
                (first, last, at),
                (handler, group, source),
                (event_name, trace_id),
            )| {
                // The fields a replay adds, varied from the others.
                let first_error = (attempts % 2 == 0).then(|| RecordedError {
                    kind,
                    message: message.clone(),
                });
                DeadLetterRecord {
                    version: RECORD_VERSION,
                    original: OriginalMessage::capture(&original),
                    id: event_name.clone(),
                    replays: attempts % 4,
                    first_error,
                    error: RecordedError { kind, message },
                    attempts,
                    first_failure_at: first,
                    last_failure_at: last,
                    handler,
                    group,
                    event_name,
                    source,
                    trace_id,
                    dead_lettered_at: at,
                }
            },
        )
}

fn with_payload(payload: Vec<u8>, headers: Headers) -> Message {
    Message::new("t", payload).with_headers(headers)
}

// ---- arbitrary input never panics ----------------------------------------------------------

proptest! {
    #[test]
    fn decoders_never_panic_on_any_message(message in message()) {
        // Results are whatever they are; a decoder may only fail with one of its two kinds.
        for result in [
            decode_json::<Value>(&message).map(drop),
            decode_json::<Order>(&message).map(drop),
            decode_event::<Value>(&message, &EnvelopeFields::STANDARD).map(drop),
            decode_event::<Order>(&message, &EnvelopeFields::STANDARD).map(drop),
            decode_event::<Value>(&message, &FOREIGN).map(drop),
            decode_event::<Order>(&message, &FOREIGN).map(drop),
        ] {
            if let Err(error) = result {
                prop_assert!(
                    matches!(error.kind(), FailureKind::Decode | FailureKind::Schema),
                    "a decoder failed with kind {}",
                    error.kind()
                );
                prop_assert!(!error.is_retryable(), "a bad payload must not be retried");
            }
        }
        let _ = messaging_core::envelope::event_name(&message, &EnvelopeFields::STANDARD);
        let _ = messaging_core::envelope::event_name(&message, &FOREIGN);
        let _ = message.previous_attempts();
        let _ = message.ordering_key();
    }

    #[test]
    fn dead_letter_record_parser_never_panics(bytes in hostile_bytes()) {
        if let Ok(record) = DeadLetterRecord::from_bytes(&bytes) {
            // Whatever parsed can be replayed or refused, never a panic.
            let _ = record.original.payload_bytes();
            let _ = record.original.to_replay();
        }
    }

    #[test]
    fn any_message_is_captured_and_its_bytes_come_back(message in message()) {
        let original = OriginalMessage::capture(&message);
        prop_assert_eq!(original.payload_bytes().unwrap(), message.payload.clone());
        prop_assert_eq!(
            original.encoding.as_deref(),
            std::str::from_utf8(&message.payload).err().map(|_| "base64")
        );
        prop_assert_eq!(&original.headers, &message.headers);
        prop_assert_eq!(original.key_bytes().unwrap(), message.key.clone());
        prop_assert_eq!(
            original.key_encoding.as_deref(),
            message.key.as_ref().filter(|k| k.as_str().is_none()).map(|_| "base64")
        );
        prop_assert_eq!(original.position, message.position.to_string());
    }

    #[test]
    fn previous_attempts_reads_numbers_and_ignores_garbage(value in any::<String>()) {
        let mut headers = Headers::new();
        headers.insert(header::ATTEMPT.to_owned(), value.clone());
        let attempts = with_payload(Vec::new(), headers).previous_attempts();
        prop_assert_eq!(attempts, value.trim().parse::<u32>().unwrap_or(0));
    }

    #[test]
    fn previous_attempts_reads_padded_numbers(n in any::<u32>(), pad in "[ \t]{0,3}") {
        let mut headers = Headers::new();
        headers.insert(header::ATTEMPT.to_owned(), format!("{pad}{n}{pad}"));
        prop_assert_eq!(with_payload(Vec::new(), headers).previous_attempts(), n);
    }
}

// ---- encode → decode is identity -----------------------------------------------------------

proptest! {
    #[test]
    fn events_with_any_json_data_round_trip(event in event(json_value())) {
        let bytes = serde_json::to_vec(&event).unwrap();
        let decoded: Event<Value> =
            decode_event(&with_payload(bytes, Headers::new()), &EnvelopeFields::STANDARD)
                .unwrap();
        prop_assert_eq!(decoded, event);
    }

    #[test]
    fn events_with_typed_data_round_trip(event in event(order())) {
        let bytes = serde_json::to_vec(&event).unwrap();
        let message = with_payload(bytes, Headers::new());
        let decoded: Event<Order> = decode_event(&message, &EnvelopeFields::STANDARD).unwrap();
        prop_assert_eq!(&decoded, &event);
        // The name is found in the body when no header carries it.
        prop_assert_eq!(
            messaging_core::envelope::event_name(&message, &EnvelopeFields::STANDARD),
            Some(event.name.clone())
        );
    }

    #[test]
    fn the_name_header_wins_over_the_body(event in event(json_value()), name in any::<String>()) {
        let mut headers = Headers::new();
        headers.insert(header::EVENT_NAME.to_owned(), name.clone());
        let message = with_payload(serde_json::to_vec(&event).unwrap(), headers);
        prop_assert_eq!(
            messaging_core::envelope::event_name(&message, &EnvelopeFields::STANDARD),
            Some(name)
        );
    }

    #[test]
    fn foreign_envelopes_give_back_name_and_data(
        name in any::<String>(),
        data in json_value(),
        extra in btree_map("[a-z]{1,8}", json_value(), 0..4),
        id in any::<u128>(),
        trace in any::<Option<String>>(),
    ) {
        let mut object: serde_json::Map<String, Value> = extra
            .into_iter()
            .filter(|(k, _)| k != "type" && k != "payload")
            .collect();
        object.insert("type".to_owned(), Value::from(name.clone()));
        object.insert("payload".to_owned(), data.clone());
        let mut headers = Headers::new();
        headers.insert(header::EVENT_ID.to_owned(), Uuid::from_u128(id).to_string());
        if let Some(trace) = &trace {
            headers.insert(header::TRACE_ID.to_owned(), trace.clone());
        }
        let message = with_payload(serde_json::to_vec(&object).unwrap(), headers);
        prop_assert_eq!(messaging_core::envelope::event_name(&message, &FOREIGN), Some(name.clone()));
        let event: Event<Value> = decode_event(&message, &FOREIGN).unwrap();
        prop_assert_eq!(event.name, name);
        prop_assert_eq!(event.data, data);
        prop_assert_eq!(event.id, Uuid::from_u128(id));
        prop_assert_eq!(event.trace_id, trace);
    }

    #[test]
    fn whole_bodies_round_trip(order in order()) {
        let message = with_payload(serde_json::to_vec(&order).unwrap(), Headers::new());
        prop_assert_eq!(decode_json::<Order>(&message).unwrap(), order);
    }

    #[test]
    fn dead_letter_records_round_trip(record in message().prop_flat_map(record)) {
        let out = record.to_message("t.dlq");
        prop_assert_eq!(out.headers.get(DLQ_HEADER), Some("1"));
        prop_assert_eq!(out.key, record.original.key_bytes().unwrap());
        let back = DeadLetterRecord::from_bytes(&out.payload).unwrap();
        prop_assert_eq!(back, record);
    }

    #[test]
    fn replay_restores_bytes_and_headers(message in message(), attempt in any::<String>()) {
        let mut message = message;
        message.headers.insert(header::ATTEMPT.to_owned(), attempt);
        let record = DeadLetterRecord {
            version: RECORD_VERSION,
            original: OriginalMessage::capture(&message),
            error: RecordedError { kind: FailureKind::Decode, message: String::new() },
            attempts: 1,
            first_failure_at: Utc::now(),
            last_failure_at: Utc::now(),
            handler: "h".to_owned(),
            group: "g".to_owned(),
            event_name: None,
            source: String::new(),
            trace_id: None,
            dead_lettered_at: Utc::now(),
            id: None,
            replays: 0,
            first_error: None,
        };
        // Through the wire and back, as `consumer dlq replay` reads it.
        let parsed = DeadLetterRecord::from_bytes(&record.to_message("t.dlq").payload).unwrap();
        let replay = parsed.original.to_replay().unwrap();
        prop_assert_eq!(replay.topic.as_str(), &*message.topic);
        prop_assert_eq!(&replay.key, &message.key);
        prop_assert_eq!(&replay.payload, &message.payload);
        let mut expected = message.headers.clone();
        expected.remove(header::ATTEMPT);
        expected.insert(header::REPLAYED.to_owned(), "1".to_owned());
        prop_assert_eq!(replay.headers, expected);
    }
}

// ---- the hostile inputs of issue 7, one by one ---------------------------------------------

#[test]
fn hostile_bodies_fail_with_the_kind_the_dlq_records() {
    let std = EnvelopeFields::STANDARD;
    let event = serde_json::to_value(Event::new("e", serde_json::json!({"x": 1}), "s")).unwrap();
    let without = |field: &str| {
        let mut e = event.clone();
        e.as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&e).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, FailureKind, FailureKind)> = vec![
        // (what, body, kind as a whole body of `Order`, kind as an `Event<Order>`)
        (
            "malformed JSON",
            b"{\"order_id\": 1,".to_vec(),
            FailureKind::Decode,
            FailureKind::Decode,
        ),
        (
            "wrong shape",
            br#"{"order_id":"x"}"#.to_vec(),
            FailureKind::Schema,
            FailureKind::Decode,
        ),
        (
            "invalid UTF-8",
            vec![0xff, 0xfe, b'{', 0x80],
            FailureKind::Decode,
            FailureKind::Decode,
        ),
        (
            "empty body",
            Vec::new(),
            FailureKind::Decode,
            FailureKind::Decode,
        ),
        (
            "a JSON string",
            br#""just text""#.to_vec(),
            FailureKind::Schema,
            FailureKind::Decode,
        ),
        (
            "no id",
            without("id"),
            FailureKind::Schema,
            FailureKind::Decode,
        ),
        (
            "no timestamp",
            without("timestamp"),
            FailureKind::Schema,
            FailureKind::Decode,
        ),
        (
            "no data",
            without("data"),
            FailureKind::Schema,
            FailureKind::Decode,
        ),
        (
            "bad data",
            serde_json::to_vec(&event).unwrap(),
            FailureKind::Schema,
            FailureKind::Schema,
        ),
    ];
    for (what, body, as_body, as_event) in cases {
        let message = with_payload(body, Headers::new());
        let error = decode_json::<Order>(&message).unwrap_err();
        assert_eq!(error.kind(), as_body, "{what} as a body: {error}");
        let error = decode_event::<Order>(&message, &std).unwrap_err();
        assert_eq!(error.kind(), as_event, "{what} as an event: {error}");
    }
}

#[test]
fn broken_base64_in_a_record_is_an_error_not_a_panic() {
    let mut original = OriginalMessage::capture(&with_payload(b"abc".to_vec(), Headers::new()));
    original.encoding = Some("base64".to_owned());
    original.payload = "not base64!".to_owned();
    assert!(
        original.payload_bytes().is_err(),
        "broken base64 is an error"
    );
    assert!(original.to_replay().is_err());
}

#[test]
fn timestamps_that_leave_years_0000_to_9999_in_utc_are_refused() {
    // Either would be written back as `-0001-…` or `+10000-…`, which RFC 3339 cannot read.
    for timestamp in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"] {
        let mut event = serde_json::to_value(Event::new("e", serde_json::json!({}), "s")).unwrap();
        event["timestamp"] = Value::from(timestamp);
        let message = with_payload(serde_json::to_vec(&event).unwrap(), Headers::new());
        let error = decode_event::<Value>(&message, &EnvelopeFields::STANDARD).unwrap_err();
        assert_eq!(error.kind(), FailureKind::Decode, "{timestamp}: {error}");
    }
    for timestamp in [
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2026-06-30T23:59:60.5Z",
    ] {
        let mut event = serde_json::to_value(Event::new("e", serde_json::json!({}), "s")).unwrap();
        event["timestamp"] = Value::from(timestamp);
        let message = with_payload(serde_json::to_vec(&event).unwrap(), Headers::new());
        let decoded: Event<Value> = decode_event(&message, &EnvelopeFields::STANDARD).unwrap();
        let again = with_payload(serde_json::to_vec(&decoded).unwrap(), Headers::new());
        let back: Event<Value> = decode_event(&again, &EnvelopeFields::STANDARD).unwrap();
        assert_eq!(back, decoded, "{timestamp} round trips");
    }
}

proptest! {
    #[test]
    fn timestamps_with_any_offset_decode_only_if_they_re_encode(
        (year, month, day) in prop_oneof![
            (0i32..=9999, 1u32..=12, 1u32..=28),
            // The edges, where an offset moves the time out of four-digit years.
            Just((0, 1, 1)),
            Just((9999, 12, 31)),
        ],
        (hour, minute, second) in (0u32..24, 0u32..60, 0u32..60),
        fraction in prop_oneof![Just(String::new()), "\\.[0-9]{1,9}"],
        offset in prop_oneof![Just("Z".to_owned()), (any::<bool>(), 0u32..24, 0u32..60)
            .prop_map(|(east, h, m)| format!("{}{h:02}:{m:02}", if east { '+' } else { '-' }))],
    ) {
        let timestamp = format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{offset}"
        );
        let mut event = serde_json::to_value(Event::new("e", Value::Null, "s")).unwrap();
        event["timestamp"] = Value::from(timestamp.clone());
        let message = with_payload(serde_json::to_vec(&event).unwrap(), Headers::new());
        let utc = chrono::DateTime::parse_from_rfc3339(&timestamp).unwrap().with_timezone(&Utc);
        match decode_event::<Value>(&message, &EnvelopeFields::STANDARD) {
            Ok(decoded) => {
                prop_assert_eq!(decoded.timestamp, utc);
                let again = with_payload(serde_json::to_vec(&decoded).unwrap(), Headers::new());
                let back: Event<Value> =
                    decode_event(&again, &EnvelopeFields::STANDARD).unwrap();
                prop_assert_eq!(back, decoded);
            }
            Err(error) => {
                prop_assert_eq!(error.kind(), FailureKind::Decode);
                prop_assert!(
                    !(0..=9999).contains(&chrono::Datelike::year(&utc)),
                    "{} refused: {}", timestamp, error
                );
            }
        }
    }
}
