//! The stream entry layout (documented in the crate docs) and the parsing of the stream
//! replies (`XREADGROUP`, `XAUTOCLAIM`, `XRANGE`) straight into [`Message`]s, moving the
//! payload bytes instead of copying them.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use messaging_core::message::header;
use messaging_core::{Headers, Key, Message, OutgoingMessage, Position, TopicName};
use redis::{Cmd, Value};

use crate::error::RedisBrokerError;

/// The field holding the message body.
pub const PAYLOAD_FIELD: &str = "payload";

/// A stream entry id, `<milliseconds>-<sequence>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    /// The id before every entry (the start of `XAUTOCLAIM` and of a pending re-read).
    pub(crate) const ZERO: Self = Self { ms: 0, seq: 0 };

    /// The smallest id after this one (an exclusive bound where Redis takes inclusive ones,
    /// as `XTRIM … MINID`).
    pub(crate) fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl FromStr for EntryId {
    type Err = RedisBrokerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            RedisBrokerError::reply(
                "a stream command",
                format!("`{s}` is not a stream entry id"),
            )
        };
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The `XADD` of `message`: `payload`, the key as `x-message-key`, then every header as a
/// field of its own. `maxlen` trims approximately.
pub(crate) fn xadd(
    message: &OutgoingMessage,
    maxlen: Option<usize>,
) -> Result<Cmd, RedisBrokerError> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&message.topic);
    if let Some(maxlen) = maxlen {
        cmd.arg("MAXLEN").arg("~").arg(maxlen);
    }
    cmd.arg("*").arg(PAYLOAD_FIELD).arg(&message.payload[..]);
    if let Some(key) = &message.key {
        cmd.arg(header::KEY).arg(key.as_bytes());
    }
    for (name, value) in &message.headers {
        if name == PAYLOAD_FIELD {
            return Err(RedisBrokerError::ReservedHeader(name.to_owned()));
        }
        // The key field was written from `message.key`, which wins over a header of that name.
        if name == header::KEY && message.key.is_some() {
            continue;
        }
        cmd.arg(name).arg(value);
    }
    Ok(cmd)
}

/// One entry of a reply; `fields` is `None` for an entry deleted (or trimmed) while pending.
#[derive(Debug)]
pub(crate) struct RawEntry {
    pub id: String,
    pub fields: Option<Vec<Value>>,
}

impl RawEntry {
    /// The message this entry carries on `topic` (`None` when it was deleted).
    pub(crate) fn into_message(self, topic: impl Into<TopicName>) -> Option<Message> {
        let fields = self.fields?;
        Some(decode(topic.into(), self.id, fields))
    }
}

/// Builds the message from the flat `[name, value, name, value …]` field list. An entry with
/// no `payload` field was written by someone else: its fields become a JSON object as body.
fn decode(topic: TopicName, id: String, fields: Vec<Value>) -> Message {
    let mut payload = None;
    let mut key = None;
    let mut headers = Headers::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = text(bytes_of(name));
        if name == PAYLOAD_FIELD {
            payload = Some(Bytes::from(bytes_of(value)));
        } else if name == header::KEY {
            key = Some(Key::from(bytes_of(value)));
        } else {
            headers.insert(name, bytes_of(value));
        }
    }
    let payload = match payload {
        Some(payload) => payload,
        None => {
            let mut object: serde_json::Map<String, serde_json::Value> =
                std::mem::take(&mut headers)
                    .into_iter()
                    .map(|(k, v)| (k, text(v).into()))
                    .collect();
            if let Some(key) = key.take() {
                object.insert(header::KEY.to_owned(), key.to_text_lossy().into());
            }
            Bytes::from(serde_json::Value::Object(object).to_string())
        }
    };
    let mut message = Message::new(topic, payload)
        .with_headers(headers)
        .with_position(Position::StreamId(id));
    message.key = key;
    message
}

fn bytes_of(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(s) => s.into_bytes(),
        Value::VerbatimString { text, .. } => text.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        Value::Double(n) => n.to_string().into_bytes(),
        Value::Boolean(b) => b.to_string().into_bytes(),
        Value::Okay => b"OK".to_vec(),
        _ => Vec::new(),
    }
}

/// Field names (and, in a foreign entry's JSON body, values) that are not UTF-8 are
/// converted lossily, never rejected.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn array(command: &'static str, value: Value) -> Result<Vec<Value>, RedisBrokerError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(RedisBrokerError::reply(
            command,
            format!("expected an array, got {other:?}"),
        )),
    }
}

fn string(command: &'static str, value: Value) -> Result<String, RedisBrokerError> {
    match value {
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => {
            Ok(text(bytes_of(value)))
        }
        other => Err(RedisBrokerError::reply(
            command,
            format!("expected a string, got {other:?}"),
        )),
    }
}

/// Parses a list of `[id, [field, value …] | nil]` entries.
pub(crate) fn parse_entries(
    command: &'static str,
    value: Value,
) -> Result<Vec<RawEntry>, RedisBrokerError> {
    array(command, value)?
        .into_iter()
        .map(|entry| {
            let mut parts = array(command, entry)?.into_iter();
            let id = string(command, parts.next().unwrap_or(Value::Nil))?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(Value::Map(pairs)) => {
                    Some(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect())
                }
                Some(fields) => Some(array(command, fields)?),
            };
            Ok(RawEntry { id, fields })
        })
        .collect()
}

/// Parses an `XREADGROUP` or `XREAD` reply (`command`; nil on timeout; an array of
/// `[stream, entries]` in RESP2, a map in RESP3) into entries per stream.
pub(crate) fn parse_read(
    command: &'static str,
    value: Value,
) -> Result<Vec<(String, Vec<RawEntry>)>, RedisBrokerError> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        other => array(command, other)?
            .into_iter()
            .map(|pair| {
                let mut parts = array(command, pair)?.into_iter();
                Ok((
                    parts.next().unwrap_or(Value::Nil),
                    parts.next().unwrap_or(Value::Nil),
                ))
            })
            .collect::<Result<_, RedisBrokerError>>()?,
    };
    pairs
        .into_iter()
        .map(|(stream, entries)| Ok((string(command, stream)?, parse_entries(command, entries)?)))
        .collect()
}

/// An `XAUTOCLAIM` reply.
#[derive(Debug)]
pub(crate) struct AutoClaimed {
    /// Where the next call continues; `0-0` once the whole pending list was scanned.
    pub next: EntryId,
    pub entries: Vec<RawEntry>,
    /// Entries that no longer exist (Redis 7 removes them from the pending list itself).
    pub deleted: Vec<String>,
}

pub(crate) fn parse_autoclaim(value: Value) -> Result<AutoClaimed, RedisBrokerError> {
    const COMMAND: &str = "XAUTOCLAIM";
    let mut parts = array(COMMAND, value)?.into_iter();
    let next = string(COMMAND, parts.next().unwrap_or(Value::Nil))?.parse()?;
    let entries = parse_entries(COMMAND, parts.next().unwrap_or(Value::Nil))?;
    let deleted = array(COMMAND, parts.next().unwrap_or(Value::Nil))?
        .into_iter()
        .map(|id| string(COMMAND, id))
        .collect::<Result<_, _>>()?;
    Ok(AutoClaimed {
        next,
        entries,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn entry_ids_round_trip_and_order() {
        let a: EntryId = "1700000000000-3".parse().unwrap();
        let b: EntryId = "1700000000000-12".parse().unwrap();
        assert!(a < b && EntryId::ZERO < a);
        assert_eq!(a.to_string(), "1700000000000-3");
        assert!("12".parse::<EntryId>().is_err());
        assert_eq!(a.next().to_string(), "1700000000000-4");
        let last: EntryId = format!("7-{}", u64::MAX).parse().unwrap();
        assert_eq!(last.next().to_string(), "8-0");
    }

    #[test]
    fn xadd_writes_payload_key_and_headers() {
        let message = OutgoingMessage::new("orders", &b"{}"[..])
            .with_key("42")
            .with_header(header::EVENT_NAME, "order.created");
        let packed =
            String::from_utf8_lossy(&xadd(&message, Some(1000)).unwrap().get_packed_command())
                .into_owned();
        // Every argument follows its `$<length>` line.
        let lines: Vec<&str> = packed.split("\r\n").collect();
        let args: Vec<&str> = lines
            .windows(2)
            .filter(|w| w[0].starts_with('$'))
            .map(|w| w[1])
            .collect();
        assert_eq!(
            args,
            [
                "XADD",
                "orders",
                "MAXLEN",
                "~",
                "1000",
                "*",
                "payload",
                "{}",
                "x-message-key",
                "42",
                "x-event-name",
                "order.created"
            ]
        );
        let reserved = OutgoingMessage::new("t", &b""[..]).with_header("payload", "x");
        assert!(matches!(
            xadd(&reserved, None),
            Err(RedisBrokerError::ReservedHeader(_))
        ));
    }

    #[test]
    fn read_reply_becomes_messages_and_deleted_entries_are_marked() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("orders"),
            Value::Array(vec![
                entry(
                    "1-0",
                    &["payload", "body", "x-message-key", "k", "x-trace-id", "t"],
                ),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let mut streams = parse_read("XREADGROUP", reply).unwrap();
        assert_eq!(streams.len(), 1);
        let (stream, entries) = streams.remove(0);
        assert_eq!(stream, "orders");
        let mut entries = entries.into_iter();
        let message = entries.next().unwrap().into_message("orders").unwrap();
        assert_eq!(&message.payload[..], b"body");
        assert_eq!(message.key_str(), Some("k"));
        assert_eq!(message.header(header::TRACE_ID), Some("t"));
        assert!(!message.headers.contains_key(header::KEY));
        assert_eq!(message.position, Position::StreamId("1-0".into()));
        assert!(entries.next().unwrap().into_message("orders").is_none());
        assert!(parse_read("XREAD", Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn resp3_map_reply_is_read_too() {
        let reply = Value::Map(vec![(
            bulk("s"),
            Value::Array(vec![entry("5-1", &["payload", "x"])]),
        )]);
        let streams = parse_read("XREADGROUP", reply).unwrap();
        assert_eq!(streams[0].0, "s");
        assert_eq!(streams[0].1[0].id, "5-1");
    }

    #[test]
    fn foreign_entries_become_a_json_body() {
        let raw = parse_entries(
            "XRANGE",
            Value::Array(vec![entry("1-1", &["type", "BEAT_CREATED", "user", "7"])]),
        )
        .unwrap();
        let message = raw
            .into_iter()
            .next()
            .unwrap()
            .into_message("beats")
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"type": "BEAT_CREATED", "user": "7"})
        );
        assert!(message.headers.is_empty());
    }

    #[test]
    fn autoclaim_reply_has_cursor_entries_and_deleted_ids() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![entry("3-0", &["payload", "p"])]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        let claimed = parse_autoclaim(reply).unwrap();
        assert_eq!(claimed.next, EntryId::ZERO);
        assert_eq!(claimed.entries.len(), 1);
        assert_eq!(claimed.deleted, ["2-0"]);
    }
}
