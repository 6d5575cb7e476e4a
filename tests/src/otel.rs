//! W3C trace context across a broker (feature `otel`): the test bodies of `tests/otel.rs`,
//! run against every broker.
//!
//! The process gets one global `tracing` subscriber with an OpenTelemetry layer exporting
//! into memory, so these bodies live in a test binary of their own: other tests must not
//! find a subscriber they did not install. No global propagator is set: the framework's
//! default, W3C `traceparent`/`tracestate`, is what is tested. Each test finds its spans
//! by its own trace id, so tests running at once do not see each other's.

use std::future::IntoFuture as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use messaging_core::message::header;
use messaging_core::reply::{ReplyInbox, Responder};
use messaging_core::{HandlerError, HandlerSpec, Invocation, OutgoingMessage, decode_json};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::{Connect, Log, Scenario, eventually, recorder};

/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(60);

/// The name of the span the dispatcher opens for each attempt.
pub const HANDLER_SPAN: &str = "message";

/// The finished spans of this process, exported by the OpenTelemetry layer of the global
/// subscriber, which the first call installs.
pub fn spans() -> &'static InMemorySpanExporter {
    static SPANS: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &SPANS
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            // The simple processor exports each span as it ends, on the thread that ends it.
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tests"));
            // The handlers' spans are at debug level; the brokers' clients stay out.
            let filter = tracing_subscriber::filter::Targets::new()
                .with_target("messaging_core", tracing::Level::DEBUG)
                .with_target("messaging_tests", tracing::Level::TRACE)
                .with_target("otel", tracing::Level::TRACE);
            let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
            (exporter, provider)
        })
        .0
}

/// The span context of `span` (which must be enabled: the layer gives it one).
pub fn context_of(span: &tracing::Span) -> SpanContext {
    let context = span.context().span().span_context().clone();
    assert!(
        context.is_valid(),
        "the OpenTelemetry layer gives spans a context"
    );
    context
}

/// Waits until `n` finished spans named `name` belong to `trace`, and returns them.
pub async fn finished(trace: TraceId, name: &str, n: usize) -> Vec<SpanData> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found: Vec<SpanData> = spans()
            .get_finished_spans()
            .expect("the exporter is running")
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace && s.name == name)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {n} `{name}` spans of trace {trace}; have {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of attribute `key` of `span`, as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The `traceparent` of a sampled span: `00-<trace id>-<span id>-01`.
pub fn traceparent(trace: TraceId, span: SpanId) -> String {
    format!("00-{trace}-{span}-01")
}

/// A message sent, published as an event and fired in the background inside a span is
/// handled in spans that are children of it (the publisher's trace id and span id as parent),
/// and carries `traceparent` beside an `x-trace-id` of the same trace.
pub async fn handler_spans_are_children_of_the_publishers(connect: Connect) {
    spans();
    let s = Scenario::new(connect);
    let topic = s.topic("traced");
    s.broker()
        .await
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    let log = Log::default();
    let runtime = s.start(vec![recorder("traced", &topic, log.clone())]).await;
    let producer = s.producer().await;

    let publisher = tracing::info_span!("publisher");
    let parent = context_of(&publisher);
    async {
        producer
            .send(&topic, &json!({"via": "send"}))
            .await
            .unwrap();
        producer
            .publish_event("traced.published", &json!({"via": "event"}), &topic)
            .await
            .unwrap();
        let (_, fired) = producer
            .envelope("traced.fired", &json!({"via": "fire"}), &topic, None)
            .unwrap();
        producer.fire(fired);
    }
    .instrument(publisher.clone())
    .await;
    drop(publisher);

    eventually("3 messages", || log.len() >= 3).await;
    let trace_id = parent.trace_id().to_string();
    for message in log.all() {
        assert_eq!(
            message.header("traceparent"),
            Some(traceparent(parent.trace_id(), parent.span_id()).as_str()),
            "W3C context injected: {message:?}"
        );
        assert_eq!(
            message.header(header::TRACE_ID),
            Some(trace_id.as_str()),
            "x-trace-id kept, with the same trace: {message:?}"
        );
    }
    let handled = finished(parent.trace_id(), HANDLER_SPAN, 3).await;
    assert_eq!(handled.len(), 3, "one attempt each: {handled:?}");
    for span in &handled {
        assert_eq!(span.parent_span_id, parent.span_id(), "{span:?}");
        assert!(span.parent_span_is_remote, "the parent came over the wire");
        assert_eq!(attribute(span, "topic").as_deref(), Some(topic.as_str()));
    }
    runtime.shutdown().await.unwrap();
}

/// Replies with the question it was asked; fails for good on `{"fail": true}`.
fn echo(topic: &str) -> HandlerSpec {
    HandlerSpec::new("echo", [topic], |inv: Invocation| async move {
        let question: Value = decode_json(&inv.message)?;
        if question["fail"] == json!(true) {
            return Err(HandlerError::permanent("asked to fail"));
        }
        let responder =
            Responder::of(&inv).ok_or_else(|| HandlerError::permanent("no reply-to"))?;
        responder.value(question).await
    })
}

/// A request-reply round trip is one trace: the request, made inside the caller's span, is
/// handled in a child of it; the reply carries the handler's span as its parent. Also with a
/// request whose `traceparent` another service wrote, and for the error reply of a request
/// that failed for good (sent after the handler's span, it carries the request's context).
pub async fn request_reply_is_one_trace(connect: Connect) {
    spans();
    let s = Scenario::new(connect);
    let topic = s.topic("asked");
    s.broker()
        .await
        .declare_topics(&[topic.clone(), format!("{topic}.dlq")])
        .await
        .unwrap();
    let runtime = s.start(vec![echo(&topic)]).await;

    // Through `Producer::request`, inside the caller's span.
    let producer = s.producer().await;
    let caller = tracing::info_span!("caller");
    let parent = context_of(&caller);
    let answer: Value = producer
        .request(&topic, &json!({"n": 1}))
        .timeout(PATIENCE)
        .into_future()
        .instrument(caller.clone())
        .await
        .expect("the reply");
    drop(caller);
    assert_eq!(answer, json!({"n": 1}));
    let handled = finished(parent.trace_id(), HANDLER_SPAN, 1).await;
    assert_eq!(handled[0].parent_span_id, parent.span_id(), "{handled:?}");

    // Through the broker's own reply inbox, to read the reply's headers; the request's
    // context as another service would write it.
    let broker = s.broker().await;
    let ReplyInbox {
        address,
        mut replies,
        publisher,
        ..
    } = broker.open_replies().await.expect("a reply inbox");
    let (trace, span) = (
        TraceId::from(uuid::Uuid::now_v7().as_u128()),
        SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
    );
    let mut ask = async |body: &[u8]| {
        let correlation = format!("otel-{}", uuid::Uuid::now_v7().simple());
        let request = OutgoingMessage::new(topic.clone(), body.to_vec())
            .with_header(header::REPLY_TO, address.as_str())
            .with_header(header::CORRELATION_ID, correlation.clone())
            .with_header("traceparent", traceparent(trace, span))
            .with_header("tracestate", "vendor=opaque");
        match &publisher {
            Some(publisher) => publisher.publish(request).await,
            None => broker.publish(request).await,
        }
        .expect("the request is published");
        loop {
            let reply = tokio::time::timeout(PATIENCE, replies.recv())
                .await
                .expect("a reply in time")
                .expect("the inbox stays open");
            // Others' replies arrive too where the address is shared (Kafka).
            if reply.header(header::CORRELATION_ID) == Some(correlation.as_str()) {
                break reply;
            }
        }
    };
    let reply = ask(br#"{"n":2}"#).await;
    let handled = finished(trace, HANDLER_SPAN, 1).await;
    let handler = &handled[0];
    assert_eq!(handler.parent_span_id, span, "{handler:?}");
    assert_eq!(
        handler.span_context.trace_state().header(),
        "vendor=opaque",
        "tracestate travels"
    );
    assert_eq!(
        reply.header("traceparent"),
        Some(traceparent(trace, handler.span_context.span_id()).as_str()),
        "the reply continues from the handler's span: {reply:?}"
    );
    assert_eq!(reply.header("tracestate"), Some("vendor=opaque"));

    let failed = ask(br#"{"fail":true}"#).await;
    assert_eq!(
        failed.header(header::REPLY_KIND),
        Some("error"),
        "{failed:?}"
    );
    assert_eq!(
        failed.header("traceparent"),
        Some(traceparent(trace, span).as_str()),
        "the error reply keeps the request's context: {failed:?}"
    );
    runtime.shutdown().await.unwrap();
}

/// Expands to one `#[tokio::test]` per body above, each calling it with `$connect`.
#[macro_export]
macro_rules! otel_suite {
    ($connect:path) => {
        $crate::otel_suite!(@each $connect;
            handler_spans_are_children_of_the_publishers,
            request_reply_is_one_trace,
        );
    };
    (@each $connect:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::otel::$name($connect).await
            }
        )*
    };
}
