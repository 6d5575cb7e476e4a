//! The trace id of the message or request being handled, so that what a handler publishes
//! carries it on; with the feature `otel`, also the W3C trace context (`traceparent`,
//! `tracestate`) of the current `tracing` span (see `otel.rs`).

use std::future::Future;
use std::sync::Arc;

use tokio::task::futures::TaskLocalFuture;

use crate::message::{Headers, Message, header};

/// A trace id in scope: given as text (a request's), or that of the message being handled,
/// which is read only when something is published rather than copied for every message.
pub(crate) enum InScope {
    Text(String),
    OfMessage(Arc<Message>),
}

tokio::task_local! {
    static TRACE_ID: Option<InScope>;
}

/// The trace id in scope, if any; with the feature `otel` and none in scope, the
/// OpenTelemetry trace id of the current span, so that services that know only `x-trace-id`
/// see the same id as those that read `traceparent`.
pub fn current() -> Option<String> {
    let in_scope = TRACE_ID
        .try_with(|in_scope| match in_scope {
            Some(InScope::Text(id)) => Some(id.clone()),
            Some(InScope::OfMessage(message)) => {
                message.header(header::TRACE_ID).map(str::to_owned)
            }
            None => None,
        })
        .ok()
        .flatten();
    #[cfg(feature = "otel")]
    let in_scope = in_scope.or_else(crate::otel::current_trace_id);
    in_scope
}

/// Writes the W3C trace context of the current span into the headers of a message about to
/// be published, unless they carry one (feature `otel`; nothing otherwise).
#[inline]
pub(crate) fn inject_context(headers: &mut Headers) {
    #[cfg(feature = "otel")]
    crate::otel::inject(headers);
    #[cfg(not(feature = "otel"))]
    let _ = headers;
}

/// The W3C trace context that `message` carries, kept for its replies (feature `otel`;
/// empty otherwise).
pub(crate) fn context_of(message: &Message) -> Headers {
    #[cfg(feature = "otel")]
    {
        let mut context = Headers::new();
        crate::otel::copy(&message.headers, &mut context);
        context
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = message;
        Headers::new()
    }
}

/// Writes into a reply the current span's trace context (the handler's), else the one its
/// request carried (feature `otel`; nothing otherwise).
#[inline]
pub(crate) fn inject_reply_context(request_context: &Headers, reply: &mut Headers) {
    #[cfg(feature = "otel")]
    if !crate::otel::inject(reply) {
        crate::otel::copy(request_context, reply);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (request_context, reply);
}

/// Makes the trace context that `message` carries the parent of `span`, a handler's span
/// not yet entered (feature `otel`; nothing otherwise).
#[inline]
pub(crate) fn continue_trace(span: &tracing::Span, message: &Message) {
    #[cfg(feature = "otel")]
    crate::otel::set_parent(span, &message.headers);
    #[cfg(not(feature = "otel"))]
    let _ = (span, message);
}

/// Runs `future` with `trace_id` in scope (an HTTP middleware does this per request).
pub async fn with_trace_id<F: Future>(trace_id: Option<String>, future: F) -> F::Output {
    TRACE_ID.scope(trace_id.map(InScope::Text), future).await
}

/// `future` with the trace id of `message` (its `x-trace-id` header), if any, in scope:
/// what the dispatcher runs a handler in.
pub(crate) fn with_trace_of<F: Future>(
    message: Option<Arc<Message>>,
    future: F,
) -> TaskLocalFuture<Option<InScope>, F> {
    TRACE_ID.scope(message.map(InScope::OfMessage), future)
}

/// The trace id an HTTP request carries: `x-trace-id`, else the trace id of a W3C
/// `traceparent` header (`00-<trace id>-<span id>-<flags>`).
#[cfg(feature = "axum")]
pub fn from_http_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(id) = headers.get("x-trace-id").and_then(|v| v.to_str().ok()) {
        let id = id.trim();
        if !id.is_empty() && id.len() <= 128 {
            return Some(id.to_owned());
        }
    }
    let parent = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = parent.trim().split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_owned())
}

/// An axum middleware that puts the request's trace id and `Idempotency-Key` header in
/// scope, so events fired by `#[event]` handlers carry them:
/// `router.layer(axum::middleware::from_fn(trace::http_middleware))`. With the feature
/// `otel`, a request that carries a W3C trace context runs in an `http request` span (debug
/// level) whose parent is that context, so that the events carry the caller's trace on.
#[cfg(feature = "axum")]
pub async fn http_middleware(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let trace_id = from_http_headers(request.headers());
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(str::to_owned);
    #[cfg(feature = "otel")]
    let parent = crate::otel::extract_http(request.headers());
    let running = crate::event::with_request_idempotency_key(
        idempotency_key,
        with_trace_id(trace_id, next.run(request)),
    );
    #[cfg(feature = "otel")]
    let running = crate::otel::in_child_span(parent, running);
    running.await
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn reads_x_trace_id_then_traceparent() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_http_headers(&headers), None);
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            from_http_headers(&headers).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        headers.insert("x-trace-id", "req-42".parse().unwrap());
        assert_eq!(from_http_headers(&headers).as_deref(), Some("req-42"));
        let mut bad = HeaderMap::new();
        bad.insert(
            "traceparent",
            "00-nothex-00f067aa0ba902b7-01".parse().unwrap(),
        );
        assert_eq!(from_http_headers(&bad), None);
    }
}
