//! `#[event]` on axum handlers, driven with `tower::ServiceExt::oneshot` (issue 2, done-when
//! 6): the response is unchanged, the envelope is published after the handler returned and
//! never on `Err`, `include_result = false` publishes `{}`, `key_field` sets the key, and a
//! failing broker only counts a drop.
//!
//! `#[event]` publishes through the process-wide producer, so the tests take turns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use messaging_core::metrics::metrics;
use messaging_core::prelude::*;
use messaging_core::{
    BoxFuture, Broker, BrokerError, Consumer, MemoryBroker, OutgoingMessage, Subscription,
    install_producer,
};
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static BROKER: std::sync::OnceLock<MemoryBroker> = std::sync::OnceLock::new();
static BODY_SAW_NOTHING_PUBLISHED: AtomicBool = AtomicBool::new(false);

fn broker() -> &'static MemoryBroker {
    BROKER.get_or_init(MemoryBroker::new)
}

fn use_broker(broker: Arc<dyn Broker>) {
    let config = Config::default().with_source("users-api");
    install_producer(Producer::new(broker, config));
}

#[derive(Deserialize)]
struct NewUser {
    email: String,
}

#[derive(Serialize)]
struct UserOut {
    id: u64,
    email: String,
}

struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

#[event("user.created", topic = "event-test.users", key_field = "id")]
async fn register(Json(body): Json<NewUser>) -> Result<(StatusCode, Json<UserOut>), ApiError> {
    if body.email.is_empty() {
        return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, "email required"));
    }
    // Still inside the handler: nothing may have been published yet.
    BODY_SAW_NOTHING_PUBLISHED.store(
        broker().messages("event-test.users").is_empty(),
        Ordering::SeqCst,
    );
    Ok((
        StatusCode::CREATED,
        Json(UserOut {
            id: 7,
            email: body.email,
        }),
    ))
}

#[event("user.deleted", topic = "event-test.deleted", include_result = false)]
async fn delete_user() -> Result<Json<UserOut>, ApiError> {
    Ok(Json(UserOut {
        id: 9,
        email: "secret@example.com".into(),
    }))
}

fn app() -> axum::Router {
    axum::Router::new()
        .route("/users", post(register))
        .route("/users/delete", post(delete_user))
        .layer(axum::middleware::from_fn(
            messaging_core::trace::http_middleware,
        ))
}

async fn call(uri: &str, body: &str) -> (StatusCode, String) {
    let request = Request::post(uri)
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn published(topic: &str, count: usize) -> Vec<Arc<messaging_core::Message>> {
    get_producer()
        .flush_within(Duration::from_secs(5))
        .await
        .unwrap();
    let messages = broker().messages(topic);
    assert_eq!(messages.len(), count, "messages on {topic}");
    messages
}

#[tokio::test]
async fn ok_publishes_the_envelope_after_the_handler_returned_with_the_key() {
    let _turn = TURN.lock().await;
    use_broker(Arc::new(broker().clone()));
    let (status, body) = call("/users", r#"{"email":"a@b.c"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "response unchanged");
    assert_eq!(body, r#"{"id":7,"email":"a@b.c"}"#, "response unchanged");
    assert!(
        BODY_SAW_NOTHING_PUBLISHED.load(Ordering::SeqCst),
        "published before the handler returned"
    );

    let messages = published("event-test.users", 1).await;
    let m = &messages[0];
    assert_eq!(m.key_str(), Some("7"), "key_field sets the key");
    assert_eq!(m.header("x-event-name"), Some("user.created"));
    let event: Event<serde_json::Value> = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(event.name, "user.created");
    assert_eq!(event.source, "users-api");
    assert_eq!(
        event.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "trace id from the request"
    );
    assert_eq!(
        m.header("x-trace-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(event.data, serde_json::json!({"id": 7, "email": "a@b.c"}));
    assert_eq!(m.header("x-event-id"), Some(event.id.to_string().as_str()));
}

#[tokio::test]
async fn err_publishes_nothing_and_keeps_the_error_response() {
    let _turn = TURN.lock().await;
    use_broker(Arc::new(broker().clone()));
    let before = broker().messages("event-test.users").len();
    let (status, body) = call("/users", r#"{"email":""}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "email required")
    );
    published("event-test.users", before).await;
}

#[tokio::test]
async fn include_result_false_publishes_empty_data() {
    let _turn = TURN.lock().await;
    use_broker(Arc::new(broker().clone()));
    let (status, body) = call("/users/delete", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("secret@example.com"),
        "the response still carries the result"
    );
    let messages = published("event-test.deleted", 1).await;
    let event: Event<serde_json::Value> = serde_json::from_slice(&messages[0].payload).unwrap();
    assert_eq!(event.data, serde_json::json!({}));
    assert!(!String::from_utf8_lossy(&messages[0].payload).contains("secret"));
}

/// A broker whose every publish fails.
struct Down;

impl Broker for Down {
    fn name(&self) -> &'static str {
        "down"
    }
    fn publish(&self, _message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Err(BrokerError::connection("down", "connection refused")) })
    }
    fn subscribe(&self, _s: Subscription) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async { Err(BrokerError::connection("down", "connection refused")) })
    }
}

#[tokio::test]
async fn a_failing_broker_only_counts_a_drop() {
    let _turn = TURN.lock().await;
    use_broker(Arc::new(Down));
    let dropped = metrics().dropped();
    let (status, body) = call("/users", r#"{"email":"x@y.z"}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::CREATED, r#"{"id":7,"email":"x@y.z"}"#)
    );
    get_producer()
        .flush_within(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        metrics().dropped(),
        dropped + 1,
        "messaging_events_dropped_total moved by one"
    );
}
