//! W3C trace context (feature `otel`): what is published carries the OpenTelemetry context of
//! the current `tracing` span, and a handler's span continues the context its message carries.
//!
//! The context is read from and written to headers by the global text-map propagator
//! (`opentelemetry::global::set_text_map_propagator`), or by W3C's `traceparent`/`tracestate`
//! ([`TraceContextPropagator`]) while none is set. Spans have an OpenTelemetry context only
//! where a `tracing-opentelemetry` layer is installed; elsewhere nothing is written or read.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::message::Headers;

/// Runs `f` with the global propagator, or the W3C one while the global one is the no-op
/// default (which propagates no field).
fn with_propagator<T>(f: impl FnOnce(&dyn TextMapPropagator) -> T) -> T {
    let mut f = Some(f);
    global::get_text_map_propagator(|global| {
        let f = f
            .take()
            .unwrap_or_else(|| unreachable!("the propagator is lent once"));
        if global.fields().next().is_some() {
            f(global)
        } else {
            f(&TraceContextPropagator::new())
        }
    })
}

/// The OpenTelemetry context of the current `tracing` span, if it has a valid one.
fn current_context() -> Option<Context> {
    let cx = tracing::Span::current().context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// The trace id (32 hex digits) of the current span's OpenTelemetry context, if any.
pub(crate) fn current_trace_id() -> Option<String> {
    current_context().map(|cx| cx.span().span_context().trace_id().to_string())
}

/// Writes the current span's context into `headers`, unless they already carry a context
/// (a message passed on keeps the one it came with). Returns whether it wrote one.
pub(crate) fn inject(headers: &mut Headers) -> bool {
    let Some(cx) = current_context() else {
        return false;
    };
    with_propagator(|propagator| {
        if propagator.fields().any(|field| headers.contains_key(field)) {
            return false;
        }
        propagator.inject_context(&cx, &mut Writer(headers));
        true
    })
}

/// The context that `headers` carry, if they carry a valid one.
pub(crate) fn extract(headers: &Headers) -> Option<Context> {
    let cx = with_propagator(|propagator| {
        propagator.extract_with_context(&Context::new(), &Reader(headers))
    });
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes the context `headers` carry the parent of `span`, which must not have been entered
/// yet. Without an OpenTelemetry layer, or without a context in `headers`, nothing changes.
pub(crate) fn set_parent(span: &tracing::Span, headers: &Headers) {
    if span.is_disabled() {
        return;
    }
    if let Some(cx) = extract(headers) {
        // Fails only without an OpenTelemetry layer, when there is no span to parent.
        let _ = span.set_parent(cx);
    }
}

/// Copies the context `from` carries into `to` (the request's into its reply, when no span
/// with a context sends it).
pub(crate) fn copy(from: &Headers, to: &mut Headers) {
    with_propagator(|propagator| {
        for field in propagator.fields() {
            if let Some(value) = from.get_bytes(field) {
                to.insert(field, value.to_vec());
            }
        }
    });
}

struct Writer<'a>(&'a mut Headers);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct Reader<'a>(&'a Headers);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().collect()
    }
}

/// The context an HTTP request carries (`traceparent`), if it carries a valid one.
#[cfg(feature = "axum")]
pub(crate) fn extract_http(headers: &axum::http::HeaderMap) -> Option<Context> {
    struct HttpReader<'a>(&'a axum::http::HeaderMap);

    impl Extractor for HttpReader<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    let cx = with_propagator(|propagator| {
        propagator.extract_with_context(&Context::new(), &HttpReader(headers))
    });
    cx.span().span_context().is_valid().then_some(cx)
}

/// `future` in an `http request` span (debug level, as the handlers' spans) whose parent is
/// `parent`, so that what an HTTP handler publishes continues its caller's trace; as it is
/// without a parent or with the span disabled.
#[cfg(feature = "axum")]
pub(crate) fn in_child_span<F: std::future::Future>(
    parent: Option<Context>,
    future: F,
) -> futures::future::Either<F, tracing::instrument::Instrumented<F>> {
    use futures::future::Either;
    use tracing::Instrument as _;

    let Some(parent) = parent else {
        return Either::Left(future);
    };
    let span = tracing::debug_span!("http request");
    if span.is_disabled() {
        return Either::Left(future);
    }
    let _ = span.set_parent(parent);
    Either::Right(future.instrument(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_a_w3c_context_while_no_global_propagator_is_set() {
        let mut headers = Headers::new();
        assert!(extract(&headers).is_none());
        headers.insert("traceparent", PARENT);
        headers.insert("tracestate", "vendor=opaque");
        let cx = extract(&headers).expect("a valid context");
        let span = cx.span().span_context().clone();
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_remote() && span.is_sampled());
        assert_eq!(span.trace_state().header(), "vendor=opaque");

        let mut bad = Headers::new();
        bad.insert("traceparent", "00-nothex-00f067aa0ba902b7-01");
        assert!(extract(&bad).is_none());
    }

    #[test]
    fn copies_the_context_fields_only() {
        let mut from = Headers::new();
        from.insert("traceparent", PARENT);
        from.insert("tracestate", "vendor=opaque");
        from.insert("x-other", "kept out");
        let mut to = Headers::new();
        copy(&from, &mut to);
        assert_eq!(to.get("traceparent"), Some(PARENT));
        assert_eq!(to.get("tracestate"), Some("vendor=opaque"));
        assert_eq!(to.len(), 2);
    }

    #[test]
    fn writes_nothing_without_an_opentelemetry_layer() {
        let span = tracing::info_span!("no layer");
        let _entered = span.enter();
        let mut headers = Headers::new();
        assert!(!inject(&mut headers));
        assert!(headers.is_empty());
        assert_eq!(current_trace_id(), None);
    }
}
