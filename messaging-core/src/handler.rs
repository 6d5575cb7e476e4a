//! What a handler is once erased: a function from an [`Invocation`] to a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::HandlerError;
use crate::extract::Context;
use crate::message::Message;

/// A boxed, sendable future. Used throughout instead of `async fn` in traits because brokers
/// and handlers are chosen at run time and held as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of one attempt.
pub type HandlerResult = Result<(), HandlerError>;

/// The future of one attempt.
pub type HandlerFuture = BoxFuture<'static, HandlerResult>;

/// One attempt at handling one message.
#[derive(Clone)]
pub struct Invocation {
    /// The message.
    pub message: Arc<Message>,
    /// The runtime's shared context.
    pub context: Arc<Context>,
    /// This attempt, 1 for the first.
    pub attempt: u32,
    /// The handler's name.
    pub handler: &'static str,
}

/// An erased handler. It borrows the invocation and takes what its future needs (the
/// decoded payload, the extractors) before it returns, so that no `Arc` is cloned per
/// attempt: two clones and drops cost about 5 % of the framework's work on a message
/// (BENCHMARKS.md).
pub type HandlerFn = Arc<dyn Fn(&Invocation) -> HandlerFuture + Send + Sync>;

/// What a handler may return: `()` or `Result<_, E>` with `E: Into<HandlerError>`.
#[diagnostic::on_unimplemented(
    message = "a handler must return `()` or `Result<_, E>` where `E: Into<HandlerError>`, not `{Self}`",
    label = "unsupported return type",
    note = "return `anyhow::Result<()>`, `Result<(), HandlerError>` or any `Result<_, E>` whose error converts with `?`"
)]
pub trait IntoHandlerResult {
    /// The attempt's outcome.
    fn into_handler_result(self) -> HandlerResult;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> HandlerResult {
        Ok(())
    }
}

impl<T, E: Into<HandlerError>> IntoHandlerResult for Result<T, E> {
    fn into_handler_result(self) -> HandlerResult {
        self.map(drop).map_err(Into::into)
    }
}
