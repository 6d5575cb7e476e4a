#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod broker;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
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
pub mod memory;
pub mod message;
pub mod metrics;
pub mod producer;
pub mod registry;
pub mod replay;
pub mod retry;
pub mod runtime;
pub mod testing;
pub mod trace;

pub use broker::{
    Acker, Broker, BrokerFactory, Consumer, DlqSnapshot, Readiness, StartFrom, Subscription,
    linked_backends,
};
pub use config::{Config, configure_messaging, current_config};
pub use disabled::DisabledBroker;
pub use dlq::DeadLetterRecord;
pub use envelope::{EnvelopeFields, Event, TypedEvent, decode_event, decode_json};
pub use error::{BrokerError, Error, FailureKind, HandlerError};
pub use extract::{Context, FromContext, Metadata, State};
pub use handler::{BoxFuture, Invocation};
pub use memory::MemoryBroker;
pub use message::{Headers, Message, OutgoingMessage, Position, TopicName, TopicNames};
pub use producer::{Producer, SendOptions, get_producer, install_producer, publish, publish_event};
pub use registry::{HandlerKind, HandlerSpec, registered_handlers};
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
        Config, Event, HandlerError, Metadata, Producer, SendOptions, State, TypedEvent,
        configure_messaging, consumer, event, get_producer, message_handler, on_event, publish,
        publish_event,
    };
}

/// What the macros' generated code reaches. Not a public API.
#[doc(hidden)]
pub mod __private {
    use std::any::{Any, TypeId};
    use std::sync::Arc;

    pub use crate::envelope::{EnvelopeFields, decode_event, decode_json};
    #[cfg(feature = "axum")]
    pub use crate::event::ViaJson;
    pub use crate::event::{EventData, EventSpec, ViaSerialize, emit_event};

    /// The traits `#[event]` resolves its data with, whichever exist with the enabled
    /// features; the generated code glob-imports this module.
    pub mod event_data {
        #[cfg(feature = "axum")]
        pub use crate::event::ViaJson;
        pub use crate::event::ViaSerialize;
    }
    pub use crate::extract::{FromContext, Requirement};
    pub use crate::handler::{HandlerFuture, IntoHandlerResult, Invocation};
    pub use crate::registry::{HandlerKind, HandlerRegistration};
    pub use crate::retry::{Backoff, RetryPolicy};
    pub use bytes::Bytes;
    pub use inventory;
    pub use serde_json;

    use crate::error::HandlerError;

    /// The raw body.
    pub fn decode_bytes(invocation: &Invocation) -> Bytes {
        invocation.message.payload.clone()
    }

    /// The raw body as a vector.
    pub fn decode_vec(invocation: &Invocation) -> Vec<u8> {
        invocation.message.payload.to_vec()
    }

    /// The whole message.
    pub fn decode_message(invocation: &Invocation) -> crate::message::Message {
        (*invocation.message).clone()
    }

    /// Decodes the body as the schema type and then as the argument type (when they differ).
    pub fn validate_schema<S: serde::de::DeserializeOwned>(
        invocation: &Invocation,
    ) -> Result<(), HandlerError> {
        decode_json::<S>(&invocation.message).map(drop)
    }

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

    /// Compile-time check that a first argument decodes from JSON.
    #[diagnostic::on_unimplemented(
        message = "the first handler argument `{Self}` cannot be decoded from a message",
        label = "cannot be decoded",
        note = "derive `serde::Deserialize` for it, or take `serde_json::Value`, `Bytes`, `Vec<u8>`, `Message` or `Event<T>`"
    )]
    pub trait JsonPayload: Sized {
        /// The body decoded as `Self`. The macros decode through this trait rather than
        /// `decode_json`, so that a type that is not `Deserialize` is reported once, with the
        /// message above, at the handler's argument.
        fn decode_payload(message: &crate::message::Message) -> Result<Self, HandlerError>;

        /// The body decoded as an envelope whose data is a `Self`.
        fn decode_envelope(
            message: &crate::message::Message,
            fields: &EnvelopeFields,
        ) -> Result<crate::envelope::Event<Self>, HandlerError>;
    }

    // Not recommended: an error names `JsonPayload` (with the message above), not serde's
    // bounds and a list of every type that implements `Deserialize`.
    #[diagnostic::do_not_recommend]
    impl<T: serde::de::DeserializeOwned> JsonPayload for T {
        fn decode_payload(message: &crate::message::Message) -> Result<Self, HandlerError> {
            decode_json(message)
        }

        fn decode_envelope(
            message: &crate::message::Message,
            fields: &EnvelopeFields,
        ) -> Result<crate::envelope::Event<Self>, HandlerError> {
            decode_event(message, fields)
        }
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

    /// Compile-time check of a payload type.
    pub fn assert_json_payload<T: JsonPayload>() {}
    /// Compile-time check of an extractor.
    pub fn assert_extractor<T: FromContext>() {}
    /// Compile-time check of a return type.
    pub fn assert_handler_result<T: IntoHandlerResult>() {}
    /// Compile-time check of a consumer type.
    pub fn assert_consumer_type<T: Default + Send + Sync + 'static>() {}
}
