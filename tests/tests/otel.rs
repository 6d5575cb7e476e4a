//! W3C trace context (feature `otel`) through the memory broker, Kafka (127.0.0.1:9092),
//! RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379): a handler's span is a child of the
//! publisher's, and a request-reply round trip is one trace. Fails, never skips, when a broker
//! cannot be reached.
//!
//! A binary of its own: it installs a global `tracing` subscriber with an OpenTelemetry layer.
//!
//! Run with: cargo test -p messaging-tests --all-features --test otel

use messaging_tests::ConnectFuture;

mod memory {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{Request, StatusCode};
    use messaging_core::{
        FromContext as _, HandlerSpec, Invocation, MemoryBroker, Producer, decode_json,
    };
    use messaging_tests::otel::{HANDLER_SPAN, context_of, finished, spans, traceparent};
    use messaging_tests::{Log, Scenario, eventually, recorder};
    use opentelemetry::trace::{SpanId, TraceId};
    use serde_json::{Value, json};
    use tower::ServiceExt as _;
    use tracing::Instrument as _;

    use super::ConnectFuture;

    // One broker per process, like one server: every "connection" reaches the same topics.
    fn connect() -> ConnectFuture {
        Box::pin(async { Arc::new(MemoryBroker::shared()) as Arc<dyn messaging_core::Broker> })
    }

    messaging_tests::otel_suite!(connect);

    /// A handler that publishes its result (`publish_to`) does so inside its span: the next
    /// step's span is a child of it, in the trace the first message began.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipeline_is_one_trace() {
        spans();
        let s = Scenario::new(connect);
        let (first, second) = (s.topic("first"), s.topic("second"));
        let next = second.clone();
        let step = HandlerSpec::new("step", [first.as_str()], move |inv: Invocation| {
            let next = next.clone();
            async move {
                let producer = Producer::from_context(&inv)?;
                let value: Value = decode_json(&inv.message)?;
                let key = inv.message.key.clone();
                messaging_core::__private::publish_output(
                    &producer,
                    "step.done",
                    &value,
                    &next,
                    key,
                )
                .await
            }
        });
        let log = Log::default();
        let runtime = s
            .start(vec![step, recorder("last", &second, log.clone())])
            .await;
        let producer = s.producer().await;
        let origin = tracing::info_span!("origin");
        let parent = context_of(&origin);
        producer
            .send(&first, &json!({"n": 1}))
            .instrument(origin.clone())
            .await
            .unwrap();
        drop(origin);
        eventually("the second step", || !log.is_empty()).await;

        let handled = finished(parent.trace_id(), HANDLER_SPAN, 2).await;
        let of = |topic: &str| {
            handled
                .iter()
                .find(|s| messaging_tests::otel::attribute(s, "topic").as_deref() == Some(topic))
                .unwrap_or_else(|| panic!("a span of {topic}: {handled:?}"))
        };
        let (step, last) = (of(&first), of(&second));
        assert_eq!(step.parent_span_id, parent.span_id());
        assert_eq!(last.parent_span_id, step.span_context.span_id());
        assert_eq!(
            log.all()[0].header("traceparent"),
            Some(traceparent(parent.trace_id(), step.span_context.span_id()).as_str())
        );
        runtime.shutdown().await.unwrap();
    }

    #[derive(Clone)]
    struct Api {
        producer: Producer,
        topic: String,
    }

    /// Fires an event as `#[event]` does, and answers with the trace id in scope.
    async fn fire_event(State(api): State<Api>) -> String {
        let (_, event) = api
            .producer
            .envelope("http.fired", &json!({}), &api.topic, None)
            .unwrap();
        api.producer.fire(event);
        messaging_core::trace::current().unwrap_or_default()
    }

    /// The HTTP middleware continues the caller's trace: a request with a `traceparent` runs
    /// in a child span of it, and the events its handler fires carry the trace on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_http_middleware_continues_the_callers_trace() {
        spans();
        let s = Scenario::new(connect);
        let topic = s.topic("fired");
        let log = Log::default();
        let runtime = s.start(vec![recorder("fired", &topic, log.clone())]).await;
        let api = Api {
            producer: s.producer().await,
            topic,
        };
        let app = axum::Router::new()
            .route("/", axum::routing::post(fire_event))
            .with_state(api)
            .layer(axum::middleware::from_fn(
                messaging_core::trace::http_middleware,
            ));
        let (trace, caller) = (
            TraceId::from(uuid::Uuid::now_v7().as_u128()),
            SpanId::from(0x5eed_u64),
        );
        let request = Request::post("/")
            .header("traceparent", traceparent(trace, caller))
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            trace.to_string(),
            "x-trace-id from traceparent"
        );

        let http = finished(trace, "http request", 1).await;
        assert_eq!(http[0].parent_span_id, caller);
        let http_span = http[0].span_context.span_id();
        let handled = finished(trace, HANDLER_SPAN, 1).await;
        assert_eq!(handled[0].parent_span_id, http_span);
        eventually("the event", || !log.is_empty()).await;
        assert_eq!(
            log.all()[0].header("traceparent"),
            Some(traceparent(trace, http_span).as_str())
        );
        runtime.shutdown().await.unwrap();
    }
}

mod kafka {
    use messaging_kafka::KafkaBroker;

    use super::ConnectFuture;

    const BOOTSTRAP: &str = "127.0.0.1:9092";

    fn connect() -> ConnectFuture {
        Box::pin(async {
            // As in `tests/kafka.rs`: the test broker's first group join takes about half of
            // `session.timeout.ms`.
            let properties = [
                ("session.timeout.ms", "6000"),
                ("messaging.topic.replication.factor", "1"),
            ];
            match KafkaBroker::connect_with_properties(BOOTSTRAP, properties).await {
                Ok(broker) => broker.into_dyn(),
                Err(error) => panic!(
                    "Kafka is not reachable at {BOOTSTRAP} (run scripts/start-kafka.sh): {error}"
                ),
            }
        })
    }

    messaging_tests::otel_suite!(connect);
}

mod rabbit {
    use std::time::Duration;

    use messaging_rabbit::{RabbitBroker, RabbitOptions};

    use super::ConnectFuture;

    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    fn connect() -> ConnectFuture {
        Box::pin(async {
            let options = RabbitOptions::new(URL)
                .connection_name("messaging-tests otel")
                .queue_expires(Duration::from_secs(300));
            match RabbitBroker::connect(options).await {
                Ok(broker) => broker.into_dyn(),
                Err(error) => panic!(
                    "RabbitMQ is not reachable at {URL} (run scripts/start-rabbitmq.sh): {error}"
                ),
            }
        })
    }

    messaging_tests::otel_suite!(connect);
}

mod redis {
    use messaging_redis::RedisBroker;

    use super::ConnectFuture;

    const URL: &str = "redis://127.0.0.1:6379/0";

    fn connect() -> ConnectFuture {
        Box::pin(async {
            match RedisBroker::connect_url(URL).await {
                Ok(broker) => broker.into_dyn(),
                Err(error) => {
                    panic!("Redis is not reachable at {URL} (run scripts/start-redis.sh): {error}")
                }
            }
        })
    }

    messaging_tests::otel_suite!(connect);
}
