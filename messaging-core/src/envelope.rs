//! The event envelope of DESIGN §3 and [`Event<T>`], the handler-facing view of it.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{FailureKind, HandlerError};
use crate::message::{Message, header};

/// An enveloped event: what `#[event]`, `publish_event` and typed publishing put on the wire,
/// and what a handler taking `Event<T>` receives (with `data` decoded as `T`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event<T> {
    /// Unique id (UUID v7, so ids sort by creation time).
    pub id: Uuid,
    /// Event name, e.g. `user.created`.
    pub name: String,
    /// The payload.
    pub data: T,
    /// When the event was created.
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    /// The publishing service (`MESSAGING_SOURCE`).
    #[serde(default)]
    pub source: String,
    /// Trace id, propagated from the message or request that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl<T> Event<T> {
    /// A new event with a fresh id and the current time.
    pub fn new(name: impl Into<String>, data: T, source: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7(),
            name: name.into(),
            data,
            timestamp: Utc::now(),
            source: source.into(),
            trace_id: None,
        }
    }

    /// Sets the trace id.
    pub fn with_trace_id(mut self, trace_id: Option<String>) -> Self {
        self.trace_id = trace_id;
        self
    }

    /// Replaces the payload, keeping the rest.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Event<U> {
        Event {
            id: self.id,
            name: self.name,
            data: f(self.data),
            timestamp: self.timestamp,
            source: self.source,
            trace_id: self.trace_id,
        }
    }
}

impl<T> std::ops::Deref for Event<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

/// A payload type that declares its event name and default topic once, so publishing and
/// handling it need no string literals.
///
/// ```
/// use messaging_core::TypedEvent;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct MoodCreated { user_id: String, score: u8 }
/// impl TypedEvent for MoodCreated {
///     const NAME: &'static str = "user.mood.created";
///     const TOPIC: &'static str = "aura360.user.events";
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not declare its event name and topic",
    note = "implement `messaging_core::TypedEvent` for `{Self}` with `const NAME` and `const TOPIC`"
)]
pub trait TypedEvent: Serialize {
    /// The event name, e.g. `user.mood.created`.
    const NAME: &'static str;
    /// The topic it is published to by default.
    const TOPIC: &'static str;
}

/// Declares a [`TypedEvent`] and registers it, so that the service's AsyncAPI document
/// (`consumer asyncapi`) lists a send operation for it, with the payload schema of its type
/// when it has one (the `schemars` feature).
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct MoodCreated { user_id: String, score: u8 }
///
/// messaging_core::typed_event!(MoodCreated, name = "user.mood.created", topic = "aura360.user.events");
///
/// assert_eq!(<MoodCreated as messaging_core::TypedEvent>::NAME, "user.mood.created");
/// assert!(messaging_core::registered_events().iter().any(|e| e.name == "user.mood.created"));
/// ```
///
/// A type whose `impl TypedEvent` is written by hand is registered with
/// `typed_event!(MoodCreated);`. A `TypedEvent` that is not registered still publishes and
/// handles as usual; the document just does not list it (nothing else can find it: a trait
/// impl leaves no trace at run time).
#[macro_export]
macro_rules! typed_event {
    ($ty:ty, name = $name:expr, topic = $topic:expr $(,)?) => {
        impl $crate::TypedEvent for $ty {
            const NAME: &'static str = $name;
            const TOPIC: &'static str = $topic;
        }
        $crate::typed_event!($ty);
    };
    ($ty:ty $(,)?) => {
        const _: () = {
            const _: () = $crate::__private::check_topic(<$ty as $crate::TypedEvent>::TOPIC);

            fn __messaging_schema() -> ::core::option::Option<$crate::__private::serde_json::Value>
            {
                // The traits that exist with the enabled features (see `json_schema`).
                #[allow(unused_imports)]
                use $crate::__private::schema_of::*;
                (&&&$crate::__private::schema_of::SchemaOf::<$ty>::NEW).__messaging_schema()
            }

            $crate::__private::inventory::submit! {
                $crate::__private::EventRegistration {
                    name: <$ty as $crate::TypedEvent>::NAME,
                    topic: <$ty as $crate::TypedEvent>::TOPIC,
                    source: $crate::__private::EventSource::Type(::core::stringify!($ty)),
                    module_path: ::core::module_path!(),
                    key_field: ::core::option::Option::None,
                    schema: __messaging_schema,
                }
            }
        };
    };
}

/// Where a foreign envelope keeps the event name and the data, e.g. `{"type": …, "payload": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeFields {
    /// The field holding the event name.
    pub name: &'static str,
    /// The field holding the data.
    pub data: &'static str,
}

impl EnvelopeFields {
    /// The framework's own envelope.
    pub const STANDARD: Self = Self {
        name: "name",
        data: "data",
    };

    /// Whether these are the framework's own fields.
    pub fn is_standard(&self) -> bool {
        *self == Self::STANDARD
    }
}

/// The event name of a message: the header when present, else the envelope's name field.
/// `None` when the body is not an object with a string in that field.
pub fn event_name(message: &Message, fields: &EnvelopeFields) -> Option<String> {
    // A name header that is not UTF-8 still names the event (lossily; no handler has that
    // name): the body is not asked instead.
    if fields.is_standard()
        && let Some(name) = message.headers.get_bytes(header::EVENT_NAME)
    {
        return Some(crate::headers::text(name).into_owned());
    }
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&message.payload).ok()?;
    match object.get(fields.name)? {
        serde_json::Value::String(name) => Some(name.clone()),
        _ => None,
    }
}

/// Decodes a whole body as JSON into `T`; a syntax error is `decode`, a shape error `schema`.
pub fn decode_json<T: DeserializeOwned>(message: &Message) -> Result<T, HandlerError> {
    serde_json::from_slice(&message.payload).map_err(classify)
}

/// Decodes an enveloped body into `Event<T>`. A body that is not an envelope is `decode`;
/// an envelope whose `data` is not a `T` is `schema`.
pub fn decode_event<T: DeserializeOwned>(
    message: &Message,
    fields: &EnvelopeFields,
) -> Result<Event<T>, HandlerError> {
    if fields.is_standard() {
        return serde_json::from_slice::<Event<T>>(&message.payload).map_err(|error| {
            // Only on failure: tell a broken envelope from bad data.
            match serde_json::from_slice::<Event<IgnoredAny>>(&message.payload) {
                Ok(_) => HandlerError::new(FailureKind::Schema, error),
                Err(_) => HandlerError::new(FailureKind::Decode, error),
            }
        });
    }
    decode_foreign(message, fields)
}

fn decode_foreign<T: DeserializeOwned>(
    message: &Message,
    fields: &EnvelopeFields,
) -> Result<Event<T>, HandlerError> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&message.payload)
            .map_err(|e| HandlerError::new(FailureKind::Decode, e))?;
    let name = match object.remove(fields.name) {
        Some(serde_json::Value::String(name)) => name,
        _ => {
            return Err(HandlerError::new(
                FailureKind::Decode,
                format!("envelope has no string field `{}`", fields.name),
            ));
        }
    };
    let data = object.remove(fields.data).ok_or_else(|| {
        HandlerError::new(
            FailureKind::Decode,
            format!("envelope has no field `{}`", fields.data),
        )
    })?;
    let data = T::deserialize(data).map_err(|e| HandlerError::new(FailureKind::Schema, e))?;
    let id = message
        .header(header::EVENT_ID)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(Uuid::now_v7);
    Ok(Event {
        id,
        name,
        data,
        timestamp: Utc::now(),
        source: String::new(),
        trace_id: message.header(header::TRACE_ID).map(str::to_owned),
    })
}

fn classify(error: serde_json::Error) -> HandlerError {
    let kind = match error.classify() {
        serde_json::error::Category::Data => FailureKind::Schema,
        _ => FailureKind::Decode,
    };
    HandlerError::new(kind, error)
}

/// Timestamps as RFC 3339 with second precision and `Z`, as DESIGN §3 shows them.
pub(crate) mod rfc3339 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let t = DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)?;
        // An offset can move a valid time out of years 0000-9999 in UTC
        // (`0000-01-01T00:00:00+01:00`), which `serialize` would write as `-0001-…` and could
        // not read back: refuse it here.
        if !(0..=9999).contains(&chrono::Datelike::year(&t)) {
            return Err(serde::de::Error::custom(format!(
                "timestamp `{s}` is outside years 0000-9999 in UTC"
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct User {
        id: u64,
    }

    #[test]
    fn envelope_round_trips_with_design_field_names() {
        let event =
            Event::new("user.created", User { id: 1 }, "svc").with_trace_id(Some("t".into()));
        let json = serde_json::to_value(&event).unwrap();
        for field in ["id", "name", "data", "timestamp", "source", "trace_id"] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        let back: Event<User> = serde_json::from_value(json).unwrap();
        assert_eq!(back.data, User { id: 1 });
        assert_eq!(back.id, event.id);
    }

    #[test]
    fn bad_data_is_schema_and_bad_envelope_is_decode() {
        let good = serde_json::to_vec(&Event::new("e", User { id: 1 }, "s")).unwrap();
        let wrong_shape = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"id\":1", "\"id\":\"x\"");
        let m = |p: Vec<u8>| Message::new("t", p);
        let std = EnvelopeFields::STANDARD;
        assert!(decode_event::<User>(&m(good), &std).is_ok());
        let e = decode_event::<User>(&m(wrong_shape.into_bytes()), &std).unwrap_err();
        assert_eq!(e.kind(), FailureKind::Schema);
        let e = decode_event::<User>(&m(br#"{"data":{"id":1}}"#.to_vec()), &std).unwrap_err();
        assert_eq!(e.kind(), FailureKind::Decode);
        let e = decode_event::<User>(&m(b"not json".to_vec()), &std).unwrap_err();
        assert_eq!(e.kind(), FailureKind::Decode);
    }

    #[test]
    fn foreign_envelope_reads_named_fields() {
        let fields = EnvelopeFields {
            name: "type",
            data: "payload",
        };
        let msg = Message::new(
            "t",
            br#"{"type":"BEAT_CREATED","payload":{"id":7}}"#.to_vec(),
        );
        assert_eq!(event_name(&msg, &fields).as_deref(), Some("BEAT_CREATED"));
        let event: Event<User> = decode_event(&msg, &fields).unwrap();
        assert_eq!(event.name, "BEAT_CREATED");
        assert_eq!(event.data, User { id: 7 });
    }
}
