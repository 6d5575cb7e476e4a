// DESIGN §2: `#[event]` on axum handlers; they stay handlers with the same signature.
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use messaging_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct NewUser {
    email: String,
}

#[derive(Serialize)]
struct UserOut {
    id: u64,
    email: String,
}

struct ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        StatusCode::BAD_REQUEST.into_response()
    }
}

// The data is what `Json` wraps; the key is its `id` field.
#[event("user.created", topic = "user-events", key_field = "id")]
async fn register(Json(body): Json<NewUser>) -> Result<Json<UserOut>, ApiError> {
    if body.email.is_empty() {
        return Err(ApiError);
    }
    let id = parse_id("1")?;
    Ok(Json(UserOut {
        id,
        email: body.email,
    }))
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| ApiError)
}

// A status code and a body: the body is the data.
#[event("user.invited", topic = "user-events")]
async fn invite(Json(body): Json<NewUser>) -> Result<(StatusCode, Json<UserOut>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(UserOut {
            id: 2,
            email: body.email,
        }),
    ))
}

// Only the fact: `include_result = false` publishes `{}`, so the `Ok` value need not
// serialize.
#[event("user.deleted", topic = "user-events", include_result = false)]
async fn remove(Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
    let _ = id;
    Ok(StatusCode::NO_CONTENT)
}

// A plain `Serialize` value outside axum, with an `anyhow` result.
#[event("report.built", topic = "reports")]
pub async fn build_report(n: u32) -> anyhow::Result<Vec<u32>> {
    Ok((0..n).collect())
}

fn main() {
    let _app: Router = Router::new()
        .route("/users", post(register))
        .route("/invites", post(invite))
        .route("/users/{id}", delete(remove));
    let _ = build_report(3);
}
