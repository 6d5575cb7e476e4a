//! The trace id of the message or request being handled, so that what a handler publishes
//! carries it on.

use std::future::Future;

tokio::task_local! {
    static TRACE_ID: Option<String>;
}

/// The trace id in scope, if any.
pub fn current() -> Option<String> {
    TRACE_ID.try_with(Clone::clone).ok().flatten()
}

/// Runs `future` with `trace_id` in scope (the dispatcher does this per message; an HTTP
/// middleware can do it per request).
pub async fn with_trace_id<F: Future>(trace_id: Option<String>, future: F) -> F::Output {
    TRACE_ID.scope(trace_id, future).await
}
