//! Between the framework's messages and Kafka records. Keys and header values are bytes and
//! kept exactly; header names that are not UTF-8 are converted lossily, never rejected.

use bytes::Bytes;
use messaging_core::{Key, Message, Position, TopicNames};
use rdkafka::message::Headers as _;

/// A received record as a new message of the framework's.
/// Its topic's name comes from `names`, the consumer's topics, shared.
pub(crate) fn to_message(record: &impl rdkafka::Message, names: &TopicNames) -> Message {
    let mut message = Message::default();
    let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
    fill(&mut message, record, names, payload);
    message
}

/// Overwrites `message` with a received record whose payload was copied into `payload`.
/// A message being reused keeps its key's and headers' buffers. Every field `Message` has
/// today is named; one added later would be left over from the message's last use, so the
/// test below checks a reused message against a new one.
pub(crate) fn fill(
    message: &mut Message,
    record: &impl rdkafka::Message,
    names: &TopicNames,
    payload: Bytes,
) {
    let Message {
        topic,
        key,
        payload: body,
        headers,
        position,
        ..
    } = message;
    match record.headers() {
        // Into the buffers a reused message holds already.
        Some(h) => headers.refill(
            h.iter()
                .map(|header| (header.key, header.value.unwrap_or_default())),
        ),
        None => headers.clear(),
    }
    *topic = match names.only() {
        // Subscribed (or assigned) to one topic by its exact name: every record is of it.
        Some(only) => only.clone(),
        None => names.get(record.topic()),
    };
    match record.key() {
        Some(bytes) => key.get_or_insert_with(Key::default).assign(bytes),
        None => *key = None,
    }
    *body = payload;
    *position = Position::Partition {
        partition: record.partition(),
        offset: record.offset(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    #[test]
    fn records_become_messages_with_their_bytes_kept() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "x-event-name",
                value: Some("user.created"),
            })
            .insert(Header {
                key: "binary",
                value: Some(&[0x66, 0xff, 0x6f][..]),
            })
            .insert(Header::<&[u8]> {
                key: "empty",
                value: None,
            });
        let record = OwnedMessage::new(
            Some(b"{\"id\":1}".to_vec()),
            Some(vec![0x6b, 0xfe]),
            "orders".to_owned(),
            Timestamp::NotAvailable,
            2,
            1187,
            Some(headers),
        );
        let names = TopicNames::new(["orders"]);
        let m = to_message(&record, &names);
        assert_eq!(&*m.topic, "orders");
        let again = to_message(&record, &names);
        assert!(m.topic.ptr_eq(&again.topic), "one string per topic");
        assert_eq!(m.key, Some(Key::from(&[0x6b, 0xfe])));
        assert_eq!(m.key_str(), None, "not text");
        assert_eq!(&m.payload[..], b"{\"id\":1}");
        assert_eq!(m.header("x-event-name"), Some("user.created"));
        assert_eq!(m.header("binary"), None, "not text");
        assert_eq!(m.headers.get_bytes("binary"), Some(&[0x66, 0xff, 0x6f][..]));
        assert_eq!(m.header("empty"), Some(""));
        assert_eq!(m.position.to_string(), "partition 2 offset 1187");
    }

    #[test]
    fn a_reused_message_keeps_nothing_of_its_last_record() {
        let record = |offset, headers: Option<OwnedHeaders>| {
            OwnedMessage::new(
                Some(b"b".to_vec()),
                None,
                "orders".to_owned(),
                Timestamp::NotAvailable,
                0,
                offset,
                headers,
            )
        };
        let names = TopicNames::new(["orders"]);
        let two = OwnedHeaders::new()
            .insert(Header {
                key: "x-trace-id",
                value: Some("t-1"),
            })
            .insert(Header {
                key: "x-event-name",
                value: Some("user.created"),
            });
        let mut message = to_message(&record(1, Some(two)), &names);
        assert_eq!(
            message.headers.iter().collect::<Vec<_>>(),
            [
                ("x-event-name", &b"user.created"[..]),
                ("x-trace-id", &b"t-1"[..])
            ]
        );
        let one = OwnedHeaders::new().insert(Header {
            key: "x-source",
            value: Some("svc"),
        });
        fill(&mut message, &record(2, Some(one)), &names, Bytes::new());
        assert_eq!(
            message.headers.iter().collect::<Vec<_>>(),
            [("x-source", &b"svc"[..])]
        );
        fill(
            &mut message,
            &record(3, None),
            &names,
            Bytes::from_static(b"b"),
        );
        assert!(message.headers.is_empty());
        assert_eq!(message.position.to_string(), "partition 0 offset 3");
        assert_eq!(
            message,
            to_message(&record(3, None), &names),
            "a reused message equals a new one"
        );
    }
}
