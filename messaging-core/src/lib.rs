#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![forbid(unsafe_code)]

#[cfg(feature = "asyncapi")]
pub mod asyncapi;
pub mod broker;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
mod decode;
mod disabled;
mod dispatch;
pub mod dlq;
pub mod envelope;
pub mod error;
mod event;
pub mod extract;
pub mod handler;
pub mod headers;
#[cfg(feature = "cli")]
pub mod health;
pub mod idempotency;
pub mod json_schema;
pub mod key;
pub mod lag;
pub mod memory;
pub mod message;
pub mod metrics;
#[cfg(feature = "otel")]
mod otel;
pub mod producer;
pub mod registry;
pub mod replay;
pub mod reply;
pub mod request;
pub mod retry;
pub mod runtime;
mod table;
pub mod testing;
pub mod trace;

pub use broker::{
    Acker, BindingOf, BindingsFn, Broker, BrokerFactory, Consumer, DlqSnapshot, Readiness,
    StartFrom, Subscription, linked_backends,
};
pub use config::{Config, configure_messaging, current_config};
pub use decode::FromMessage;
pub use disabled::DisabledBroker;
pub use dlq::DeadLetterRecord;
pub use envelope::{EnvelopeFields, Event, TypedEvent, decode_event, decode_json};
pub use error::{BrokerError, Error, FailureKind, HandlerError};
pub use extract::{Context, FromContext, Metadata, State};
pub use handler::{BoxFuture, Invocation};
pub use key::Key;
pub use lag::LagRow;
pub use memory::MemoryBroker;
pub use message::{Headers, Message, OutgoingMessage, Position, TopicName, TopicNames};
pub use producer::{Producer, SendOptions, get_producer, install_producer, publish, publish_event};
pub use registry::{
    EventRegistration, EventSource, HandlerKind, HandlerSpec, registered_events,
    registered_handlers,
};
pub use reply::ReplyStream;
pub use request::RequestError;
pub use retry::{Backoff, RetryPolicy};
pub use runtime::{Runtime, RuntimeBuilder};

pub use messaging_macros::{consumer, event, message_handler, on_event};

/// The `main` of a service's consumer binary, `src/bin/consumer.rs`, in one line:
/// `messaging_core::main!(my_service);`, or with values for `State<T>`:
/// `messaging_core::main!(my_service, |runtime| runtime.state(my_service::Db));`
/// (the second argument is given to [`cli::main_with`]).
///
/// Handlers register at link time, and a binary that never names its library crate does not
/// link it, so the handlers that live there would be missing. This macro names the crate
/// (`use my_service as _;`), which links it with every registration it holds, and with the
/// broker crates that it names in turn.
#[cfg(feature = "cli")]
#[macro_export]
macro_rules! main {
    ($krate:ident $(,)?) => {
        use $krate as _;

        fn main() -> ::std::process::ExitCode {
            $crate::cli::main()
        }
    };
    ($krate:ident, $adjust:expr $(,)?) => {
        use $krate as _;

        fn main() -> ::std::process::ExitCode {
            $crate::cli::main_with($adjust)
        }
    };
}

/// What a service needs in scope: the macros, the handler argument types, publishing.
pub mod prelude {
    pub use crate::{
        Config, Event, FromMessage, HandlerError, Metadata, Producer, ReplyStream, RequestError,
        SendOptions, State, TypedEvent, configure_messaging, consumer, event, get_producer,
        message_handler, on_event, publish, publish_event,
    };
}

/// What the macros' generated code reaches. Not a public API.
#[doc(hidden)]
pub mod __private {
    use std::any::{Any, TypeId};
    use std::sync::Arc;

    pub use crate::decode::{Decoder, EventPayload, JsonPayload, NamedEvent, Schema, SchemaType};
    pub use crate::envelope::{EnvelopeFields, decode_event, decode_json};
    #[cfg(feature = "axum")]
    pub use crate::event::ViaJson;
    pub use crate::event::{EventData, EventSpec, ViaSerialize, emit_event, emit_event_with};

    /// The traits that pick a first argument's decoder and check its schema (see
    /// [`Decoder`] and [`Schema`]); the generated code glob-imports this module.
    pub mod decoders {
        pub use crate::decode::{
            SchemaIsEventData, SchemaIsPayload, SchemaOfBody, SchemaOfEventData, ViaEvent,
            ViaFromMessage, ViaJson,
        };
    }

    /// The traits `#[event]` resolves its data with, whichever exist with the enabled
    /// features; the generated code glob-imports this module.
    pub mod event_data {
        #[cfg(feature = "axum")]
        pub use crate::event::ViaJson;
        pub use crate::event::ViaSerialize;
    }

    /// The traits `#[event]` reaches the data's `key_field` through, as [`event_data`] does
    /// for the data; the generated code glob-imports this module.
    pub mod event_key {
        /// A handler's `Ok` value, for [`KeyInJson`] / [`KeyInValue`] resolution.
        pub struct KeyOf<'a, T>(pub &'a T);

        /// The data is the value itself.
        pub trait KeyInValue<'a, T> {
            /// The data.
            fn __messaging_data(&self) -> &'a T;
        }

        impl<'a, T> KeyInValue<'a, T> for KeyOf<'a, T> {
            fn __messaging_data(&self) -> &'a T {
                self.0
            }
        }

        /// The data is what an axum response wraps.
        #[cfg(feature = "axum")]
        pub trait KeyInJson<'a, T> {
            /// The data.
            fn __messaging_data(&self) -> &'a T;
        }

        #[cfg(feature = "axum")]
        impl<'a, T> KeyInJson<'a, T> for &KeyOf<'a, axum::Json<T>> {
            fn __messaging_data(&self) -> &'a T {
                &self.0.0
            }
        }

        #[cfg(feature = "axum")]
        impl<'a, T> KeyInJson<'a, T> for &KeyOf<'a, (axum::http::StatusCode, axum::Json<T>)> {
            fn __messaging_data(&self) -> &'a T {
                &self.0.1.0
            }
        }
    }

    /// The message key made of a `key_field`'s value: a string as it is, `None` (JSON
    /// `null`) as no key, anything else as its JSON text.
    pub fn event_key<T: serde::Serialize + ?Sized>(field: &T) -> Option<String> {
        match serde_json::to_value(field) {
            Ok(serde_json::Value::String(key)) => Some(key),
            Ok(serde_json::Value::Null) | Err(_) => None,
            Ok(other) => Some(other.to_string()),
        }
    }

    /// Compile-time check of a topic given as a `const`: the rules the macros apply to a
    /// literal.
    pub const fn check_topic(topic: &str) {
        let bytes = topic.as_bytes();
        assert!(
            !bytes.is_empty(),
            "a topic name cannot be empty: give the const a value such as \"orders.created\""
        );
        let mut i = 0;
        while i < bytes.len() {
            assert!(
                !bytes[i].is_ascii_whitespace() && !bytes[i].is_ascii_control(),
                "a topic name cannot contain white space, which brokers do not accept"
            );
            i += 1;
        }
    }

    /// What the generated code replies to a request with (see [`crate::reply`]).
    pub mod reply {
        pub use crate::reply::Responder;
        pub use crate::reply::by_type::{
            Output, ReplyNull, ReplySerialized, ReplyStreamed, ReplyUnsupported,
        };
    }

    pub use crate::extract::{FromContext, Requirement};
    pub use crate::handler::{HandlerFuture, IntoHandlerResult, Invocation};
    pub use crate::json_schema as schema_of;
    pub use crate::registry::{EventRegistration, EventSource, HandlerKind, HandlerRegistration};
    pub use crate::retry::{Backoff, RetryPolicy};
    pub use inventory;
    pub use serde_json;

    use crate::error::HandlerError;

    /// The `#[consumer]` instance of type `T` (made at start-up).
    pub fn instance<T: Send + Sync + 'static>(
        invocation: &Invocation,
    ) -> Result<Arc<T>, HandlerError> {
        invocation.context.state::<T>().ok_or_else(|| {
            HandlerError::permanent(format!("no instance of `{}`", std::any::type_name::<T>()))
        })
    }

    /// Makes the default instance of a `#[consumer]` type.
    pub fn default_instance<T: Default + Send + Sync + 'static>()
    -> (TypeId, Arc<dyn Any + Send + Sync>) {
        (TypeId::of::<T>(), Arc::new(T::default()))
    }

    /// What a `#[consumer]` type must be; the macros reach its instance through this trait so
    /// that a type that does not qualify is reported once, at the `impl` block's type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a #[consumer] type",
        label = "not `Default + Send + Sync + 'static`",
        note = "the runtime makes the one instance every #[on_event] method shares with \
                `Default::default()` (unless one is registered with `.state(value)`) and uses it \
                from several tasks: derive or implement `Default`, and keep the fields \
                `Send + Sync` (e.g. `Arc<Mutex<_>>`, atomics, connection pools)"
    )]
    pub trait ConsumerType: Sized {
        /// The instance the runtime made at start-up.
        fn instance(invocation: &Invocation) -> Result<Arc<Self>, HandlerError>;

        /// Makes the default instance.
        fn make_default() -> (TypeId, Arc<dyn Any + Send + Sync>);
    }

    #[diagnostic::do_not_recommend]
    impl<T: Default + Send + Sync + 'static> ConsumerType for T {
        fn instance(invocation: &Invocation) -> Result<Arc<Self>, HandlerError> {
            instance::<T>(invocation)
        }

        fn make_default() -> (TypeId, Arc<dyn Any + Send + Sync>) {
            default_instance::<T>()
        }
    }

    /// What a handler may return, as the macros check it: `IntoHandlerResult` under a name
    /// whose error is reported as a whole, at the declared return type, instead of as the
    /// first unmet bound of the error type.
    #[diagnostic::on_unimplemented(
        message = "a handler must return `()` or `Result<_, E>` where `E: Into<HandlerError>`, not `{Self}`",
        label = "unsupported return type",
        note = "return `anyhow::Result<()>`, `Result<(), HandlerError>`, or a `Result` whose error \
                type implements `std::error::Error + Send + Sync` (e.g. with `thiserror`)"
    )]
    pub trait HandlerReturn {
        /// The attempt's outcome.
        fn into_handler_result(self) -> Result<(), HandlerError>;
    }

    #[diagnostic::do_not_recommend]
    impl<T: IntoHandlerResult> HandlerReturn for T {
        fn into_handler_result(self) -> Result<(), HandlerError> {
            IntoHandlerResult::into_handler_result(self)
        }
    }

    /// The return type of a handler with `publish_to`: its `Ok` value is published.
    #[diagnostic::on_unimplemented(
        message = "a handler with `publish_to` must return `Result<T, E>` where `T: Serialize` (the event published) and `E: Into<HandlerError>`, not `{Self}`",
        label = "its `Ok` value cannot be published",
        note = "return e.g. `anyhow::Result<ContextAggregated>` with `#[derive(Serialize)]` on the event type"
    )]
    pub trait PublishedReturn {
        /// What is published.
        type Value: serde::Serialize + Send;
        /// The value to publish, or the attempt's failure.
        fn into_value(self) -> Result<Self::Value, HandlerError>;
    }

    #[diagnostic::do_not_recommend]
    impl<T: serde::Serialize + Send, E: Into<HandlerError>> PublishedReturn for Result<T, E> {
        type Value = T;

        fn into_value(self) -> Result<T, HandlerError> {
            self.map_err(Into::into)
        }
    }

    /// The event name a `publish_to` result goes out under: its
    /// [`TypedEvent::NAME`](crate::TypedEvent::NAME) when its type has one, else the topic
    /// (resolved by autoref on a [`NameOf`](event_name::NameOf)).
    pub mod event_name {
        use crate::TypedEvent;

        /// A handler's `Ok` value, for [`NameFromType`] / [`NameFromTopic`] resolution.
        pub struct NameOf<'a, T>(pub &'a T);

        /// The value is a typed event: its own name.
        pub trait NameFromType {
            /// The name.
            fn __messaging_event_name(&self, topic: &'static str) -> &'static str;
        }

        impl<T: TypedEvent> NameFromType for &NameOf<'_, T> {
            fn __messaging_event_name(&self, _topic: &'static str) -> &'static str {
                T::NAME
            }
        }

        /// Any other value: named after the topic.
        pub trait NameFromTopic {
            /// The name.
            fn __messaging_event_name(&self, topic: &'static str) -> &'static str;
        }

        impl<T> NameFromTopic for NameOf<'_, T> {
            fn __messaging_event_name(&self, topic: &'static str) -> &'static str {
                topic
            }
        }
    }

    /// Publishes a `publish_to` handler's result as event `name` on `topic`, with the key of
    /// the message handled (so the next step keeps its order), and waits for the broker's
    /// acknowledgement: the message handled is acknowledged only after it. A publish that
    /// fails fails the attempt, which is retried as any failure.
    pub async fn publish_output<T: serde::Serialize + ?Sized>(
        producer: &crate::Producer,
        name: &str,
        value: &T,
        topic: &str,
        key: Option<crate::Key>,
    ) -> Result<(), HandlerError> {
        let (_, mut message) = producer
            .envelope(name, value, topic, None)
            .map_err(HandlerError::permanent)?;
        message.key = key;
        producer
            .send_raw(message)
            .await
            .map_err(HandlerError::retryable)
    }

    /// Compile-time check of an extractor.
    pub fn assert_extractor<T: FromContext>() {}
    /// Compile-time check of a return type.
    pub fn assert_handler_result<T: IntoHandlerResult>() {}
    /// Compile-time check of a consumer type.
    pub fn assert_consumer_type<T: Default + Send + Sync + 'static>() {}
}
