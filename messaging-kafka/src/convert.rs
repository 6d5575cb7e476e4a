//! Between the framework's messages and Kafka records. Keys and header values that are not
//! UTF-8 are converted lossily (the framework's headers are text), never rejected.

use bytes::Bytes;
use messaging_core::headers::text;
use messaging_core::{Message, Position, TopicNames};
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
/// A message being reused keeps its key's buffer. Every field is named, so that a field
/// added to `Message` cannot be left over from the message's last use.
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
    } = message;
    match record.headers() {
        // Into the strings a reused message holds already.
        Some(h) => headers.refill(
            h.iter()
                .map(|header| (header.key, header.value.map(text).unwrap_or_default())),
        ),
        None => headers.clear(),
    }
    *topic = match names.only() {
        // Subscribed (or assigned) to one topic by its exact name: every record is of it.
        Some(only) => only.clone(),
        None => names.get(record.topic()),
    };
    match record.key() {
        Some(bytes) => {
            let held = key.get_or_insert_with(String::new);
            held.clear();
            held.push_str(&text(bytes));
        }
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
    fn records_become_messages_with_lossy_text() {
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
        assert_eq!(m.key.as_deref(), Some("k\u{fffd}"));
        assert_eq!(&m.payload[..], b"{\"id\":1}");
        assert_eq!(m.header("x-event-name"), Some("user.created"));
        assert_eq!(m.header("binary"), Some("f\u{fffd}o"));
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
            [("x-event-name", "user.created"), ("x-trace-id", "t-1")]
        );
        let one = OwnedHeaders::new().insert(Header {
            key: "x-source",
            value: Some("svc"),
        });
        fill(&mut message, &record(2, Some(one)), &names, Bytes::new());
        assert_eq!(
            message.headers.iter().collect::<Vec<_>>(),
            [("x-source", "svc")]
        );
        fill(&mut message, &record(3, None), &names, Bytes::new());
        assert!(message.headers.is_empty());
        assert_eq!(message.position.to_string(), "partition 0 offset 3");
    }
}
