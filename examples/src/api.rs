//! The HTTP API (axum). `POST /users` fires `user.created` with `#[event]` after it returns;
//! `POST /orders` publishes `orders.created` and waits for the broker's acknowledgement.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use messaging_core::prelude::*;
use serde::Deserialize;

use crate::domain::{OrderCreated, User};
use crate::guardian::{self, Advice, AdviceRequest};
use crate::mood::MoodCreated;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The routes.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/users", post(register))
        .route("/orders", post(create_order))
        .route("/mood-entries", post(create_mood_entry))
        .route("/guardian/advice", post(ask_guardian))
        .route("/guardian/advice/stream", get(stream_guardian))
        // Events fired by these handlers carry the request's trace id (x-trace-id / traceparent).
        .layer(axum::middleware::from_fn(
            messaging_core::trace::http_middleware,
        ))
}

/// An error response.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// The body of `POST /users`.
#[derive(Debug, Deserialize)]
pub struct NewUser {
    /// The new user's e-mail address.
    pub email: String,
}

/// Registers a user; `user.created` goes out in the background once this returned `Ok`.
#[event("user.created", topic = "user-events", key_field = "id")]
pub async fn register(Json(body): Json<NewUser>) -> Result<(StatusCode, Json<User>), ApiError> {
    if !body.email.contains('@') {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid email".into(),
        ));
    }
    let user = User {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        email: body.email,
    };
    Ok((StatusCode::CREATED, Json(user)))
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    /// Who places it.
    pub user_id: u64,
    /// What it costs.
    pub total: f64,
}

/// Places an order: published synchronously, so a broker failure is a 503.
pub async fn create_order(
    headers: HeaderMap,
    Json(body): Json<NewOrder>,
) -> Result<(StatusCode, Json<OrderCreated>), ApiError> {
    let order = OrderCreated {
        order_id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        user_id: body.user_id,
        total: body.total,
    };
    // The payments handler is idempotent: a client retrying with the same `Idempotency-Key`
    // is charged once. Without the header, the order id is the key.
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| format!("order-{}", order.order_id), str::to_owned);
    let options = SendOptions::key(order.order_id.to_string()).idempotency_key(idempotency_key);
    get_producer()
        .send_with("orders.created", &order, options)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(order)))
}

/// Records a mood entry; `user.mood.created` starts the context pipeline in the background.
#[event(
    "user.mood.created",
    topic = "aura360.user.events",
    key_field = "user_id"
)]
pub async fn create_mood_entry(
    Json(entry): Json<MoodCreated>,
) -> Result<(StatusCode, Json<MoodCreated>), ApiError> {
    if !(1..=10).contains(&entry.mood_score) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "mood_score must be 1 to 10".into(),
        ));
    }
    Ok((StatusCode::CREATED, Json(entry)))
}

/// How long the API waits for a guardian: `GUARDIAN_TIMEOUT` (e.g. `5s`), default 30 s. Read
/// once; `bin/api` checks it at start-up, so a bad value stops it there with this error.
pub fn guardian_timeout() -> Result<std::time::Duration, String> {
    static TIMEOUT: std::sync::OnceLock<Result<std::time::Duration, String>> =
        std::sync::OnceLock::new();
    TIMEOUT
        .get_or_init(|| match std::env::var("GUARDIAN_TIMEOUT") {
            Ok(value) if !value.trim().is_empty() => humantime::parse_duration(value.trim())
                .map_err(|e| {
                    format!("GUARDIAN_TIMEOUT={value:?} is not a duration ({e}); e.g. 5s")
                }),
            _ => Ok(std::time::Duration::from_secs(30)),
        })
        .clone()
}

/// The status a failed request to a guardian answers with.
fn guardian_error(error: RequestError) -> ApiError {
    let status = match &error {
        RequestError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        RequestError::Remote { .. } | RequestError::Decode { .. } => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError(status, error.to_string())
}

/// Asks a guardian and answers with its advice: 504 when none comes in time, 502 when the
/// guardian failed.
pub async fn ask_guardian(Json(request): Json<AdviceRequest>) -> Result<Json<Advice>, ApiError> {
    let advice = get_producer()
        .request(guardian::REQUESTS, &request)
        .timeout(guardian_timeout().map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?)
        .options(SendOptions::key(request.user_id.clone()))
        .await
        .map_err(guardian_error)?;
    Ok(Json(advice))
}

/// Asks a guardian and streams its answer as Server-Sent Events: one `data:` per sentence,
/// an `error` event if it fails midway, and an `end` event.
pub async fn stream_guardian(Query(request): Query<AdviceRequest>) -> Result<Response, ApiError> {
    let chunks = get_producer()
        .request_stream::<String, _>(guardian::STREAMED_REQUESTS, &request)
        .timeout(guardian_timeout().map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?)
        .options(SendOptions::key(request.user_id.clone()))
        .await
        .map_err(guardian_error)?;
    let events = chunks
        .map(|chunk| {
            Ok(match chunk {
                Ok(sentence) => SseEvent::default().data(sentence),
                Err(error) => SseEvent::default().event("error").data(error.to_string()),
            })
        })
        .chain(futures::stream::once(async {
            Ok::<_, std::convert::Infallible>(SseEvent::default().event("end").data(""))
        }));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
