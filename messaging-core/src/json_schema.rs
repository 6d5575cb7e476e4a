//! JSON Schemas of payload types, for the AsyncAPI document (`consumer asyncapi`).
//!
//! A payload type has a schema when the `schemars` feature is on and it implements
//! `schemars::JsonSchema`; otherwise it has none and the document leaves its payload open.
//! The macros cannot see this crate's features, nor ask whether a type implements a trait, so
//! they choose by method resolution on [`SchemaOf`] (the "autoref" technique of
//! [`crate::decode::Decoder`]): the generated code calls `(&&&SchemaOf::<T>::NEW).method()`
//! with every trait of this module in scope, and the first impl that applies, from the most
//! references down, wins. Without the feature the impls that need `JsonSchema` do not exist
//! and the last resort (no schema) is taken.
//!
//! The calls run in a function the registration points to (`fn() -> Option<Value>`), not in
//! the registration itself: method resolution cannot run in the `const` that
//! `inventory::submit!` needs.

use std::marker::PhantomData;

use serde_json::Value;

/// A payload type, for schema resolution. See the module documentation.
pub struct SchemaOf<T: ?Sized>(PhantomData<fn() -> Box<T>>);

impl<T: ?Sized> SchemaOf<T> {
    /// The only value.
    pub const NEW: Self = Self(PhantomData);
}

/// The [`SchemaOf`] of the `Ok` type of `R = Result<T, E>`, as declared by a handler
/// (aliases such as `anyhow::Result<T>` included, which a macro cannot see through).
pub fn ok_of<T, E>(_: PhantomData<Result<T, E>>) -> SchemaOf<T> {
    SchemaOf::NEW
}

/// What a handler's first argument says of the message body.
#[derive(Clone, Debug, PartialEq)]
pub enum PayloadSchema {
    /// The body is the value itself (`#[message_handler]` with a plain type): its schema, if
    /// known.
    Body(Option<Value>),
    /// The body is an event envelope (`Event<T>`): the schema of its data, if known.
    Event(Option<Value>),
}

impl PayloadSchema {
    /// The same shape, with the data's schema of the `schema = …` type when that one has a
    /// schema (the body, or the envelope's data, must decode as it).
    pub fn with_schema(self, schema: Option<Value>) -> Self {
        match (self, schema) {
            (Self::Body(_), Some(schema)) => Self::Body(Some(schema)),
            (Self::Event(_), Some(schema)) => Self::Event(Some(schema)),
            (shape, None) => shape,
        }
    }

    /// The data's schema, if known.
    pub fn data(&self) -> Option<&Value> {
        match self {
            Self::Body(schema) | Self::Event(schema) => schema.as_ref(),
        }
    }

    /// Whether the body is an event envelope.
    pub fn is_event(&self) -> bool {
        matches!(self, Self::Event(_))
    }
}

/// What a registration made in code or by an older macro holds: a body of unknown shape.
pub(crate) fn unknown_payload() -> PayloadSchema {
    PayloadSchema::Body(None)
}

// --- A value's schema: `(&&&SchemaOf::<T>::NEW).__messaging_schema()` -> Option<Value> ---

/// Step 1: the data of an axum response (`Json<T>`, `(StatusCode, Json<T>)`), as `#[event]`
/// publishes it.
#[cfg(all(feature = "schemars", feature = "axum"))]
pub trait SchemaInJson {
    /// The schema.
    fn __messaging_schema(&self) -> Option<Value>;
}

#[cfg(all(feature = "schemars", feature = "axum"))]
impl<T: schemars::JsonSchema> SchemaInJson for &&SchemaOf<axum::Json<T>> {
    fn __messaging_schema(&self) -> Option<Value> {
        Some(json_schema::<T>())
    }
}

#[cfg(all(feature = "schemars", feature = "axum"))]
impl<T: schemars::JsonSchema> SchemaInJson for &&SchemaOf<(axum::http::StatusCode, axum::Json<T>)> {
    fn __messaging_schema(&self) -> Option<Value> {
        Some(json_schema::<T>())
    }
}

/// Step 2: a type that implements `JsonSchema`.
#[cfg(feature = "schemars")]
pub trait SchemaInValue {
    /// The schema.
    fn __messaging_schema(&self) -> Option<Value>;
}

#[cfg(feature = "schemars")]
impl<T: schemars::JsonSchema + ?Sized> SchemaInValue for &SchemaOf<T> {
    fn __messaging_schema(&self) -> Option<Value> {
        Some(json_schema::<T>())
    }
}

/// Step 3: any other type has no schema.
pub trait NoSchema {
    /// No schema.
    fn __messaging_schema(&self) -> Option<Value>;
}

impl<T: ?Sized> NoSchema for SchemaOf<T> {
    fn __messaging_schema(&self) -> Option<Value> {
        None
    }
}

// --- A handler's first argument: `(&&&SchemaOf::<P>::NEW).__messaging_payload()` ---

/// Step 1: `Event<T>` with `T: JsonSchema`.
#[cfg(feature = "schemars")]
pub trait PayloadIsTypedEvent {
    /// The shape and schema.
    fn __messaging_payload(&self) -> PayloadSchema;
}

#[cfg(feature = "schemars")]
impl<T: schemars::JsonSchema> PayloadIsTypedEvent for &&SchemaOf<crate::Event<T>> {
    fn __messaging_payload(&self) -> PayloadSchema {
        PayloadSchema::Event(Some(json_schema::<T>()))
    }
}

/// Step 2: any other `Event<T>`: an envelope whose data has no known schema.
pub trait PayloadIsEvent {
    /// The shape.
    fn __messaging_payload(&self) -> PayloadSchema;
}

impl<T> PayloadIsEvent for &SchemaOf<crate::Event<T>> {
    fn __messaging_payload(&self) -> PayloadSchema {
        PayloadSchema::Event(None)
    }
}

/// Step 2, beside [`PayloadIsEvent`] (never both for one type: `Event<T>` does not
/// implement `JsonSchema`): a body that implements `JsonSchema`.
#[cfg(feature = "schemars")]
pub trait PayloadIsTypedBody {
    /// The shape and schema.
    fn __messaging_payload(&self) -> PayloadSchema;
}

#[cfg(feature = "schemars")]
impl<T: schemars::JsonSchema> PayloadIsTypedBody for &SchemaOf<T> {
    fn __messaging_payload(&self) -> PayloadSchema {
        PayloadSchema::Body(Some(json_schema::<T>()))
    }
}

/// Step 3: any other body (raw bytes, a `FromMessage` type, a type without a schema).
pub trait PayloadIsBody {
    /// The shape.
    fn __messaging_payload(&self) -> PayloadSchema;
}

impl<T> PayloadIsBody for SchemaOf<T> {
    fn __messaging_payload(&self) -> PayloadSchema {
        PayloadSchema::Body(None)
    }
}

/// The schema of `T` as JSON Schema draft 7 (the dialect of AsyncAPI 3.0's default schema
/// format). Its definitions are under `definitions`, referenced as `#/definitions/<name>`;
/// the document moves them to `components/schemas`.
#[cfg(feature = "schemars")]
pub fn json_schema<T: schemars::JsonSchema + ?Sized>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Value::Object(object) = &mut schema {
        // The document says which dialect its schemas are in.
        object.remove("$schema");
    }
    schema
}

// The references choose the impl, as in the macros' generated code.
#[allow(clippy::needless_borrow)]
#[cfg(test)]
mod tests {
    use super::*;

    struct Opaque;

    #[test]
    fn without_a_schema_the_shape_is_still_known() {
        assert_eq!((&&&SchemaOf::<Opaque>::NEW).__messaging_schema(), None);
        assert_eq!(
            (&&&SchemaOf::<crate::Event<Opaque>>::NEW).__messaging_payload(),
            PayloadSchema::Event(None)
        );
        assert_eq!(
            (&&&SchemaOf::<bytes::Bytes>::NEW).__messaging_payload(),
            PayloadSchema::Body(None)
        );
        let shape = PayloadSchema::Event(None).with_schema(Some(serde_json::json!(true)));
        assert!(shape.is_event());
        assert_eq!(shape.data(), Some(&serde_json::json!(true)));
    }

    #[cfg(feature = "schemars")]
    mod with_schemars {
        use super::*;

        /// `JsonSchema` by hand: the crate does not derive it (no `derive` feature).
        struct Score;

        impl schemars::JsonSchema for Score {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                "Score".into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "integer", "minimum": 0})
            }
        }

        #[test]
        fn a_type_with_json_schema_has_its_schema() {
            let schema = (&&&SchemaOf::<Score>::NEW).__messaging_schema().unwrap();
            assert_eq!(schema["type"], "integer");
            assert!(schema.get("$schema").is_none());
            assert_eq!(
                (&&&SchemaOf::<crate::Event<Score>>::NEW).__messaging_payload(),
                PayloadSchema::Event(Some(schema.clone()))
            );
            assert_eq!(
                (&&&SchemaOf::<Score>::NEW).__messaging_payload(),
                PayloadSchema::Body(Some(schema))
            );
            // Still none for a type without it.
            assert_eq!((&&&SchemaOf::<Opaque>::NEW).__messaging_schema(), None);
        }

        #[cfg(feature = "axum")]
        #[test]
        fn an_axum_response_has_the_schema_of_its_data() {
            type Created = (axum::http::StatusCode, axum::Json<Score>);
            let schema = (&&&ok_of(PhantomData::<Result<Created, ()>>)).__messaging_schema();
            assert_eq!(schema.unwrap()["type"], "integer");
            let schema =
                (&&&ok_of(PhantomData::<Result<axum::Json<Score>, ()>>)).__messaging_schema();
            assert_eq!(schema.unwrap()["minimum"], 0);
        }
    }
}
