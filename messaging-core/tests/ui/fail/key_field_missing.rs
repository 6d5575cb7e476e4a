// `key_field` must name a field of the published data, whatever wraps it.
use axum::Json;
use axum::http::StatusCode;
use messaging_core::prelude::*;
use serde::Serialize;

#[derive(Serialize)]
struct UserOut {
    id: u64,
    email: String,
}

#[event("user.created", topic = "user-events", key_field = "user_id")]
async fn register() -> Result<Json<UserOut>, StatusCode> {
    Ok(Json(UserOut { id: 1, email: String::new() }))
}

#[event("user.invited", topic = "user-events", key_field = "nope")]
async fn invite() -> Result<(StatusCode, Json<UserOut>), StatusCode> {
    Ok((StatusCode::CREATED, Json(UserOut { id: 1, email: String::new() })))
}

#[event("report.built", topic = "reports", key_field = "name", include_result = false)]
async fn report() -> anyhow::Result<UserOut> {
    Ok(UserOut { id: 1, email: String::new() })
}

// Dynamic data has no fields to check: set the key with `SendOptions::key` and
// `Producer::send_with` instead.
#[event("user.imported", topic = "user-events", key_field = "id")]
async fn import() -> Result<Json<serde_json::Value>, StatusCode> {
    Ok(Json(serde_json::json!({"id": 1})))
}

fn main() {}
