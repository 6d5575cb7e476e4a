//! How a handler's first argument is made from a message: [`FromMessage`] for the types that
//! say so themselves, JSON for every other `Deserialize` type.
//!
//! The macros choose by the argument's *type*, never by its name: a type that implements
//! [`FromMessage`] is made by it; any other type is decoded from the body as JSON. The choice
//! is made at compile time by method resolution on [`Decoder`] (the "autoref" technique): a
//! blanket `FromMessage` impl for every `DeserializeOwned` type would conflict with the impls
//! for `Event<T>` and `Bytes`, and Rust has no stable specialisation.

use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::envelope::{EnvelopeFields, Event, decode_event, decode_json};
use crate::error::HandlerError;
use crate::message::Message;

/// A handler argument made from the whole message, in a format of its own.
///
/// Implemented for [`Event<T>`] (an envelope, `T` decoded from its data field, which the
/// `#[consumer]` keys `name_field`/`data_field` may move), [`Bytes`] (the raw body, not
/// copied) and [`Message`] (the whole message, headers and key included). Every other type
/// that implements `serde::Deserialize` is decoded from the body as JSON without implementing
/// this trait; that includes `Vec<u8>`, which is a JSON array of numbers (take `Bytes` for a
/// raw body). When a type implements both, `FromMessage` is used.
///
/// Implement it for a payload of your own format (protobuf, Avro, CSV…). An error of kind
/// [`FailureKind::Decode`](crate::FailureKind::Decode) or
/// [`Schema`](crate::FailureKind::Schema) sends the message to the dead-letter queue at once,
/// without retries.
///
/// ```
/// use messaging_core::prelude::*;
/// use messaging_core::{EnvelopeFields, FailureKind, FromMessage, Message};
///
/// /// A reading sent as plain text, `"21.5"`.
/// struct Celsius(f64);
///
/// impl FromMessage for Celsius {
///     fn from_message(message: &Message, _: &EnvelopeFields) -> Result<Self, HandlerError> {
///         let text = std::str::from_utf8(&message.payload)
///             .map_err(|e| HandlerError::new(FailureKind::Decode, e))?;
///         let value = text.trim().parse().map_err(|e| HandlerError::new(FailureKind::Decode, e))?;
///         Ok(Celsius(value))
///     }
/// }
///
/// #[message_handler(topic = "sensors.temperature")]
/// async fn record(reading: Celsius) {
///     let _ = reading.0;
/// }
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be made from a message",
    label = "no `FromMessage` impl",
    note = "implement `messaging_core::FromMessage` for it, or take `Event<T>`, `Bytes` or `Message`"
)]
pub trait FromMessage: Sized {
    /// Makes the argument. `envelope` names the fields of the event name and data, for the
    /// types that read an envelope (the framework's own unless a `#[consumer]` says otherwise).
    fn from_message(message: &Message, envelope: &EnvelopeFields) -> Result<Self, HandlerError>;
}

impl<T: DeserializeOwned> FromMessage for Event<T> {
    fn from_message(message: &Message, envelope: &EnvelopeFields) -> Result<Self, HandlerError> {
        decode_event(message, envelope)
    }
}

/// The raw body; a reference count is taken, nothing is copied.
impl FromMessage for Bytes {
    fn from_message(message: &Message, _: &EnvelopeFields) -> Result<Self, HandlerError> {
        Ok(message.payload.clone())
    }
}

/// The whole message: topic, key, headers, body and position.
impl FromMessage for Message {
    fn from_message(message: &Message, _: &EnvelopeFields) -> Result<Self, HandlerError> {
        Ok(message.clone())
    }
}

/// Picks the decoder of a handler's first argument `P`. The generated code calls
/// `(&&&Decoder::<P>::NEW).__messaging_decode(…)` with the traits below in scope; method
/// resolution tries the receiver types from the most references down, so the first of these
/// that applies wins:
/// 1. `P: FromMessage` ([`ViaFromMessage`], on `&&Decoder<P>`);
/// 2. `P` is `Event<T>` whose `T` is not `Deserialize` ([`ViaEvent`], on `&Decoder<Event<T>>`),
///    which exists only to report that `T` cannot be decoded, at `T`;
/// 3. anything else, decoded as JSON ([`ViaJson`], on `Decoder<P>`), reported through
///    [`JsonPayload`] when it is not `Deserialize`.
pub struct Decoder<P>(PhantomData<fn() -> P>);

impl<P> Decoder<P> {
    /// The only value.
    pub const NEW: Self = Self(PhantomData);
}

/// Step 1 of [`Decoder`].
pub trait ViaFromMessage<P> {
    /// The argument.
    fn __messaging_decode(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<P, HandlerError>;
}

impl<P: FromMessage> ViaFromMessage<P> for &&Decoder<P> {
    #[inline]
    fn __messaging_decode(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<P, HandlerError> {
        P::from_message(message, envelope)
    }
}

/// Step 2 of [`Decoder`].
pub trait ViaEvent<T> {
    /// The envelope.
    fn __messaging_decode(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<Event<T>, HandlerError>
    where
        T: EventPayload;
}

impl<T> ViaEvent<T> for &Decoder<Event<T>> {
    #[inline]
    fn __messaging_decode(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<Event<T>, HandlerError>
    where
        T: EventPayload,
    {
        decode_event(message, envelope)
    }
}

/// Step 3 of [`Decoder`].
pub trait ViaJson<P> {
    /// The body decoded as JSON.
    fn __messaging_decode(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<P, HandlerError>
    where
        P: JsonPayload;
}

impl<P> ViaJson<P> for Decoder<P> {
    #[inline]
    fn __messaging_decode(&self, message: &Message, _: &EnvelopeFields) -> Result<P, HandlerError>
    where
        P: JsonPayload,
    {
        decode_json(message)
    }
}

/// `DeserializeOwned` under a name whose error says what a first argument may be, reported
/// once at the argument instead of as serde's bounds and every type that implements them.
#[diagnostic::on_unimplemented(
    message = "the first handler argument `{Self}` cannot be decoded from a message",
    label = "cannot be decoded",
    note = "derive `serde::Deserialize` for it (the body is then decoded as JSON), implement \
            `messaging_core::FromMessage` for it (a format of your own), or take `Bytes` (the \
            raw body), `Message` (the whole message) or `Event<T>` (an envelope)"
)]
pub trait JsonPayload: DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> JsonPayload for T {}

/// `DeserializeOwned` for the data of an `Event<T>`.
#[diagnostic::on_unimplemented(
    message = "the event data `{Self}` cannot be decoded from an envelope",
    label = "cannot be decoded",
    note = "derive `serde::Deserialize` for it (the envelope's data field is JSON), or take \
            `Event<serde_json::Value>`"
)]
pub trait EventPayload: DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> EventPayload for T {}

/// `DeserializeOwned` for the type of `schema = S`.
#[diagnostic::on_unimplemented(
    message = "the schema `{Self}` cannot be decoded from a message",
    label = "not `Deserialize`",
    note = "derive `serde::Deserialize` for it: the body (for `Event<T>`, its data) must decode \
            as it"
)]
pub trait SchemaType: DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> SchemaType for T {}

/// Checks `schema = S` for a handler whose first argument is `P`, by the same technique as
/// [`Decoder`]: nothing when `S` is what is decoded anyway (`P` itself, or `T` of
/// `P = Event<T>`); the envelope's data decoded as `S` when `P` is an `Event`; else the body
/// decoded as `S`. Called as `(&&&Schema::<P, S>::NEW).__messaging_check(…)`.
pub struct Schema<P, S>(PhantomData<fn() -> (P, S)>);

impl<P, S> Schema<P, S> {
    /// The only value.
    pub const NEW: Self = Self(PhantomData);
}

/// The schema is the argument type.
pub trait SchemaIsPayload {
    /// Nothing to check.
    fn __messaging_check(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<(), HandlerError>;
}

impl<P> SchemaIsPayload for &&Schema<P, P> {
    #[inline]
    fn __messaging_check(&self, _: &Message, _: &EnvelopeFields) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The schema is the data type of the argument's `Event`.
pub trait SchemaIsEventData {
    /// Nothing to check.
    fn __messaging_check(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<(), HandlerError>;
}

impl<T> SchemaIsEventData for &&Schema<Event<T>, T> {
    #[inline]
    fn __messaging_check(&self, _: &Message, _: &EnvelopeFields) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The argument is an `Event`: its data must decode as the schema.
pub trait SchemaOfEventData<S> {
    /// Decodes the envelope with `S` as its data.
    fn __messaging_check(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<(), HandlerError>
    where
        S: SchemaType;
}

impl<T, S> SchemaOfEventData<S> for &Schema<Event<T>, S> {
    #[inline]
    fn __messaging_check(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<(), HandlerError>
    where
        S: SchemaType,
    {
        decode_event::<S>(message, envelope).map(drop)
    }
}

/// Any other argument: the body must decode as the schema.
pub trait SchemaOfBody<S> {
    /// Decodes the body as `S`.
    fn __messaging_check(
        &self,
        message: &Message,
        envelope: &EnvelopeFields,
    ) -> Result<(), HandlerError>
    where
        S: SchemaType;
}

impl<P, S> SchemaOfBody<S> for Schema<P, S> {
    #[inline]
    fn __messaging_check(&self, message: &Message, _: &EnvelopeFields) -> Result<(), HandlerError>
    where
        S: SchemaType,
    {
        decode_json::<S>(message).map(drop)
    }
}

/// What a bare `#[on_event]` takes its event name from: `Event<T>` with `T: TypedEvent`.
#[diagnostic::on_unimplemented(
    message = "this #[on_event] names no event, and `{Self}` does not declare one",
    label = "no event name",
    note = "write the event name in the attribute: `#[on_event(\"user.created\")]`",
    note = "a bare `#[on_event]` takes the name from `T` in `Event<T>` when `T` is a type of your \
            crate implementing `messaging_core::TypedEvent`"
)]
pub trait NamedEvent {
    /// The event name.
    const NAME: &'static str;
}

#[diagnostic::do_not_recommend]
impl<T: crate::envelope::TypedEvent> NamedEvent for Event<T> {
    const NAME: &'static str = T::NAME;
}

// The references are the point: they choose the impl, as in the generated code.
#[cfg(test)]
#[allow(clippy::needless_borrow)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Order {
        id: u64,
    }

    /// A format of its own that is also `Deserialize`: `FromMessage` wins.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Both(String);

    impl FromMessage for Both {
        fn from_message(message: &Message, _: &EnvelopeFields) -> Result<Self, HandlerError> {
            Ok(Both(String::from_utf8_lossy(&message.payload).into_owned()))
        }
    }

    #[test]
    fn the_type_chooses_the_decoder() {
        let std = EnvelopeFields::STANDARD;
        let message = Message::new("t", br#"[1, 2]"#.to_vec());
        let raw: Bytes = (&&&Decoder::<Bytes>::NEW)
            .__messaging_decode(&message, &std)
            .unwrap();
        assert_eq!(&raw[..], b"[1, 2]");
        // `Vec<u8>` is JSON like any other `Deserialize` type.
        let json: Vec<u8> = (&&&Decoder::<Vec<u8>>::NEW)
            .__messaging_decode(&message, &std)
            .unwrap();
        assert_eq!(json, [1, 2]);
        let whole: Message = (&&&Decoder::<Message>::NEW)
            .__messaging_decode(&message, &std)
            .unwrap();
        assert_eq!(whole.payload, message.payload);
        let quoted = Message::new("t", br#""quoted""#.to_vec());
        let both: Both = (&&&Decoder::<Both>::NEW)
            .__messaging_decode(&quoted, &std)
            .unwrap();
        assert_eq!(both, Both(r#""quoted""#.to_owned()));
        let order = Message::new("t", br#"{"id": 4}"#.to_vec());
        let order: Order = (&&&Decoder::<Order>::NEW)
            .__messaging_decode(&order, &std)
            .unwrap();
        assert_eq!(order, Order { id: 4 });
    }

    #[test]
    fn schema_checks_decode_only_what_is_not_decoded_anyway() {
        let std = EnvelopeFields::STANDARD;
        let not_an_order = Message::new("t", br#"{"name": "x"}"#.to_vec());
        assert!(
            (&&&Schema::<Order, Order>::NEW)
                .__messaging_check(&not_an_order, &std)
                .is_ok()
        );
        assert!(
            (&&&Schema::<serde_json::Value, Order>::NEW)
                .__messaging_check(&not_an_order, &std)
                .is_err()
        );
        assert!(
            (&&&Schema::<Event<Order>, Order>::NEW)
                .__messaging_check(&not_an_order, &std)
                .is_ok()
        );
        let event =
            serde_json::to_vec(&Event::new("e", serde_json::json!({"id": 1}), "s")).unwrap();
        let event = Message::new("t", event);
        assert!(
            (&&&Schema::<Event<serde_json::Value>, Order>::NEW)
                .__messaging_check(&event, &std)
                .is_ok()
        );
        assert!(
            (&&&Schema::<Event<serde_json::Value>, String>::NEW)
                .__messaging_check(&event, &std)
                .is_err()
        );
    }
}
