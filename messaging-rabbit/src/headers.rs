//! Headers on the wire: every header of an outgoing message travels as an AMQP long string
//! (bytes, kept exactly), the key as the `x-message-key` header (AMQP has no message key).
//! Incoming long strings and byte arrays keep their bytes; headers of the other AMQP types
//! are turned into text, never rejected.
//!
//! The request-reply headers also travel as the AMQP properties an AMQP RPC client or server
//! in another language reads and writes (DESIGN §3): `x-correlation-id` as `correlation_id`,
//! `x-reply-to` as `reply_to`. Incoming, those properties become the headers again.

use std::fmt::Write as _;

use bytes::Bytes;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties};
use messaging_core::headers::text;
use messaging_core::message::header;
use messaging_core::{Headers, Key, Message, OutgoingMessage, Position, TopicNames};

use crate::error::RabbitError;

/// AMQP delivery mode of a message written to disk.
const PERSISTENT: u8 = 2;

/// The properties of `message`: persistent, its headers and key as string headers, the
/// event id (when it has one) as the AMQP message id, and the correlation id and reply
/// address (when it has them) as `correlation_id` and `reply_to` too.
pub(crate) fn properties(message: &OutgoingMessage) -> Result<BasicProperties, RabbitError> {
    let mut table = FieldTable::default();
    for (name, value) in &message.headers {
        table.insert(
            header_name(name)?,
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    if let Some(key) = &message.key {
        table.insert(
            header_name(header::KEY)?,
            AMQPValue::LongString(LongString::from(key.as_bytes())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(table);
    if let Some(id) = message.headers.get(header::EVENT_ID)
        && let Ok(id) = ShortString::try_new(id)
    {
        properties = properties.with_message_id(id);
    }
    // A value AMQP cannot carry as a property (over 255 bytes) still travels as the header.
    if let Some(id) = short_header(message, header::CORRELATION_ID) {
        properties = properties.with_correlation_id(id);
    }
    if let Some(address) = short_header(message, header::REPLY_TO) {
        properties = properties.with_reply_to(address);
    }
    Ok(properties)
}

fn short_header(message: &OutgoingMessage, name: &str) -> Option<ShortString> {
    ShortString::try_new(message.headers.get(name)?).ok()
}

fn header_name(name: &str) -> Result<ShortString, RabbitError> {
    ShortString::try_new(name).map_err(|_| RabbitError::InvalidName {
        what: "header",
        name: name.to_owned(),
        reason: "longer than 255 bytes",
    })
}

/// The core's message for a delivery, and the delivery's acker: the routing key as topic,
/// the key header as key (and not among the headers, so records read the same as on the
/// other brokers), and the AMQP `correlation_id` and `reply_to` as their headers.
pub(crate) fn to_message(delivery: Delivery, names: &TopicNames) -> (Message, Acker) {
    let Delivery {
        delivery_tag,
        routing_key,
        properties,
        data,
        acker,
        ..
    } = delivery;
    let mut headers = properties
        .headers()
        .as_ref()
        .map(to_headers)
        .unwrap_or_default();
    let key = headers.remove(header::KEY).map(Key::from);
    reply_headers(&properties, &mut headers);
    let mut message = Message::new(names.get(routing_key.as_str()), Bytes::from(data))
        .with_headers(headers)
        .with_position(Position::DeliveryTag(delivery_tag));
    message.key = key;
    (message, acker)
}

/// What a foreign AMQP RPC client or server puts in properties, as the headers our
/// request-reply reads. The header set by one of ours wins for the correlation id (both are
/// the same when ours published it). For the reply address the property wins: RabbitMQ
/// rewrites a request's `reply_to` of `amq.rabbitmq.reply-to` into the requester's own
/// direct reply-to address, which the header (written by the requester) cannot know.
pub(crate) fn reply_headers(properties: &BasicProperties, headers: &mut Headers) {
    if let Some(id) = properties.correlation_id()
        && !headers.contains_key(header::CORRELATION_ID)
    {
        headers.insert(header::CORRELATION_ID, id.as_str());
    }
    if let Some(address) = properties.reply_to() {
        headers.insert(header::REPLY_TO, address.as_str());
    }
}

/// Every entry of an AMQP table as a header: long strings and byte arrays as their bytes,
/// other values as text.
pub(crate) fn to_headers(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.to_string(), value_to_bytes(value)))
        .collect()
}

fn value_to_bytes(value: &AMQPValue) -> Vec<u8> {
    match value {
        AMQPValue::LongString(v) => v.as_bytes().to_vec(),
        AMQPValue::ByteArray(v) => v.as_slice().to_vec(),
        other => value_to_string(other).into_bytes(),
    }
}

/// A header value of any AMQP type as text: strings and byte arrays as UTF-8 (invalid bytes
/// replaced), numbers and booleans as Rust prints them, timestamps as seconds, arrays and
/// tables as `[a, b]` and `{k: v}`.
pub(crate) fn value_to_string(value: &AMQPValue) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &AMQPValue) {
    // Writing to a String cannot fail.
    let _ = match value {
        AMQPValue::Boolean(v) => write!(out, "{v}"),
        AMQPValue::ShortShortInt(v) => write!(out, "{v}"),
        AMQPValue::ShortShortUInt(v) => write!(out, "{v}"),
        AMQPValue::ShortInt(v) => write!(out, "{v}"),
        AMQPValue::ShortUInt(v) => write!(out, "{v}"),
        AMQPValue::LongInt(v) => write!(out, "{v}"),
        AMQPValue::LongUInt(v) => write!(out, "{v}"),
        AMQPValue::LongLongInt(v) => write!(out, "{v}"),
        AMQPValue::Float(v) => write!(out, "{v}"),
        AMQPValue::Double(v) => write!(out, "{v}"),
        AMQPValue::Timestamp(v) => write!(out, "{v}"),
        AMQPValue::DecimalValue(v) => write_decimal(out, *v),
        AMQPValue::ShortString(v) => out.write_str(v.as_str()),
        AMQPValue::LongString(v) => out.write_str(&text(v.as_bytes())),
        AMQPValue::ByteArray(v) => out.write_str(&text(v.as_slice())),
        AMQPValue::Void => Ok(()),
        AMQPValue::FieldArray(items) => {
            out.push('[');
            for (i, item) in items.as_slice().iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.write_str("]")
        }
        AMQPValue::FieldTable(table) => {
            out.push('{');
            for (i, (name, item)) in table.inner().iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(name.as_str());
                out.push_str(": ");
                write_value(out, item);
            }
            out.write_str("}")
        }
    };
}

/// `value × 10^-scale` in decimal notation (`12345`, scale 2 → `123.45`).
fn write_decimal(out: &mut String, decimal: DecimalValue) -> std::fmt::Result {
    let digits = decimal.value.to_string();
    let scale = usize::from(decimal.scale);
    if scale == 0 {
        return out.write_str(&digits);
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    write!(out, "{whole}.{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, FieldArray};

    #[test]
    fn outgoing_headers_and_key_become_string_headers() {
        let message = OutgoingMessage::new("orders.created", "{}")
            .with_key("42")
            .with_header(header::EVENT_NAME, "order.created")
            .with_header(header::EVENT_ID, "0190c0e2")
            .with_header(header::ATTEMPT, "2");
        let properties = properties(&message).unwrap();
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some("0190c0e2")
        );
        let headers = to_headers(properties.headers().as_ref().unwrap());
        assert_eq!(&headers[header::EVENT_NAME], "order.created");
        assert_eq!(&headers[header::ATTEMPT], "2");
        assert_eq!(&headers[header::KEY], "42");
        let binary = OutgoingMessage::new("t", "x")
            .with_key(&[0xff, 0x00])
            .with_header("id", &[0xfe][..]);
        let headers = to_headers(
            super::properties(&binary)
                .unwrap()
                .headers()
                .as_ref()
                .unwrap(),
        );
        assert_eq!(headers.get_bytes(header::KEY), Some(&[0xff, 0x00][..]));
        assert_eq!(headers.get_bytes("id"), Some(&[0xfe][..]));
        assert!(matches!(
            properties.headers().as_ref().unwrap().inner()[header::EVENT_NAME],
            AMQPValue::LongString(_)
        ));
    }

    #[test]
    fn reply_headers_travel_as_amqp_properties_too() {
        let request = OutgoingMessage::new("t", "{}")
            .with_header(header::CORRELATION_ID, "inst:1")
            .with_header(header::REPLY_TO, "amq.rabbitmq.reply-to");
        let properties = properties(&request).unwrap();
        assert_eq!(
            properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("inst:1")
        );
        assert_eq!(
            properties.reply_to().as_ref().map(ShortString::as_str),
            Some("amq.rabbitmq.reply-to")
        );
        let headers = to_headers(properties.headers().as_ref().unwrap());
        assert_eq!(headers.get(header::CORRELATION_ID), Some("inst:1"));
        // Too long for a property: the header alone carries it.
        let long =
            OutgoingMessage::new("t", "{}").with_header(header::CORRELATION_ID, "c".repeat(300));
        assert_eq!(*super::properties(&long).unwrap().correlation_id(), None);
    }

    #[test]
    fn reply_properties_become_headers() {
        // RabbitMQ rewrote `reply_to`; the requester's header still says the pseudo-queue.
        let properties = BasicProperties::default()
            .with_correlation_id("foreign".into())
            .with_reply_to("amq.rabbitmq.reply-to.abc".into());
        let mut headers = Headers::default();
        headers.insert(header::REPLY_TO, "amq.rabbitmq.reply-to");
        headers.insert(header::CORRELATION_ID, "ours");
        reply_headers(&properties, &mut headers);
        assert_eq!(
            headers.get(header::REPLY_TO),
            Some("amq.rabbitmq.reply-to.abc")
        );
        assert_eq!(headers.get(header::CORRELATION_ID), Some("ours"));
        let mut bare = Headers::default();
        reply_headers(&properties, &mut bare);
        assert_eq!(bare.get(header::CORRELATION_ID), Some("foreign"));
        let mut none = Headers::default();
        reply_headers(&BasicProperties::default(), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn oversized_header_names_are_an_error_not_a_panic() {
        let message = OutgoingMessage::new("t", "x").with_header("h".repeat(300), "v");
        assert!(matches!(
            properties(&message),
            Err(RabbitError::InvalidName { what: "header", .. })
        ));
    }

    #[test]
    fn any_amqp_value_converts_to_text() {
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::LongInt(-3));
        let cases = [
            (AMQPValue::Boolean(true), "true"),
            (AMQPValue::ShortShortInt(-1), "-1"),
            (AMQPValue::LongLongInt(1 << 40), "1099511627776"),
            (AMQPValue::Double(1.5), "1.5"),
            (AMQPValue::Timestamp(1_700_000_000), "1700000000"),
            (
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 12345,
                }),
                "123.45",
            ),
            (
                AMQPValue::DecimalValue(DecimalValue { scale: 3, value: 5 }),
                "0.005",
            ),
            (AMQPValue::ShortString("s".into()), "s"),
            (
                AMQPValue::LongString(LongString::from(&b"ok \xff"[..])),
                "ok \u{fffd}",
            ),
            (
                AMQPValue::ByteArray(ByteArray::from(vec![0x61, 0x62])),
                "ab",
            ),
            (AMQPValue::Void, ""),
            (
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::LongUInt(1),
                    AMQPValue::Boolean(false),
                ])),
                "[1, false]",
            ),
            (AMQPValue::FieldTable(inner), "{n: -3}"),
        ];
        for (value, expected) in cases {
            assert_eq!(value_to_string(&value), expected, "{value:?}");
        }
        let binary = AMQPValue::LongString(LongString::from(&b"ok \xff"[..]));
        assert_eq!(
            value_to_bytes(&binary),
            b"ok \xff",
            "long strings keep their bytes"
        );
    }
}
