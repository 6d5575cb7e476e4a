//! Extractors: the extra handler arguments, resolved per message from the [`Context`].

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::HandlerError;
use crate::handler::Invocation;
use crate::message::{Headers, Key, Position, header};
use crate::producer::Producer;

type AnyArc = Arc<dyn Any + Send + Sync>;

/// What handlers share within one runtime: registered state and the producer.
pub struct Context {
    states: HashMap<TypeId, AnyArc>,
    producer: Producer,
}

impl Context {
    pub(crate) fn new(states: HashMap<TypeId, AnyArc>, producer: Producer) -> Self {
        Self { states, producer }
    }

    /// The registered value of type `T`.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.states
            .get(&TypeId::of::<T>())
            .and_then(|v| Arc::clone(v).downcast::<T>().ok())
    }

    /// The producer bound to this runtime's broker.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }
}

/// A value a handler needs registered before the runtime starts (checked at start-up).
#[derive(Clone, Copy, Debug)]
pub struct Requirement {
    /// The type of the value.
    pub type_id: TypeId,
    /// Its name, for the error message.
    pub type_name: &'static str,
}

/// A handler argument built from the invocation. Implement it to add your own extractors.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler extractor",
    label = "not an extractor",
    note = "extra handler arguments must be extractors: `State<T>`, `Metadata` or `Producer`; \
            wrap shared values in `State<T>` and register them on the runtime with `.state(value)`"
)]
pub trait FromContext: Sized {
    /// Builds the argument.
    fn from_context(invocation: &Invocation) -> Result<Self, HandlerError>;

    /// What must be registered for [`FromContext::from_context`] to succeed; checked once at
    /// start-up so a missing value fails the start, not every message.
    fn requirement() -> Option<Requirement> {
        None
    }
}

/// A value registered once at start-up (`RuntimeBuilder::state`), e.g. a database pool.
pub struct State<T>(pub Arc<T>);

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Send + Sync + 'static> FromContext for State<T> {
    fn from_context(invocation: &Invocation) -> Result<Self, HandlerError> {
        invocation.context.state::<T>().map(State).ok_or_else(|| {
            HandlerError::permanent(format!(
                "no state of type `{}` registered",
                type_name::<T>()
            ))
        })
    }

    fn requirement() -> Option<Requirement> {
        Some(Requirement {
            type_id: TypeId::of::<T>(),
            type_name: type_name::<T>(),
        })
    }
}

/// Where a message came from and how often it was tried.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// Its topic.
    pub topic: String,
    /// Its key (bytes; [`Metadata::key_str`] reads it as text).
    pub key: Option<Key>,
    /// Its headers.
    pub headers: Headers,
    /// The broker position (partition/offset, stream id, delivery tag).
    pub position: Position,
    /// This attempt, 1 for the first.
    pub attempt: u32,
    /// The trace id, if it carries one.
    pub trace_id: Option<String>,
    /// The event name, if it carries one.
    pub event_name: Option<String>,
    /// The handler running.
    pub handler: &'static str,
}

impl Metadata {
    /// The key as text, when there is one and it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_ref().and_then(Key::as_str)
    }
}

impl FromContext for Metadata {
    fn from_context(invocation: &Invocation) -> Result<Self, HandlerError> {
        let m = &invocation.message;
        Ok(Self {
            topic: m.topic.to_string(),
            key: m.key.clone(),
            headers: m.headers.clone(),
            position: m.position.clone(),
            attempt: invocation.attempt,
            trace_id: m.header(header::TRACE_ID).map(str::to_owned),
            event_name: m.header(header::EVENT_NAME).map(str::to_owned),
            handler: invocation.handler,
        })
    }
}

impl FromContext for Producer {
    fn from_context(invocation: &Invocation) -> Result<Self, HandlerError> {
        Ok(invocation.context.producer().clone())
    }
}
