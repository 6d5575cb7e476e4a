use axum::Json;
use axum::response::IntoResponse;
use messaging_core::prelude::*;

#[event("user.created", topic = "user-events")]
async fn no_return_type() {}

#[event("user.created", topic = "user-events")]
async fn plain_json() -> Json<u64> {
    Json(1)
}

#[event("user.created", topic = "user-events")]
async fn opaque() -> Result<impl IntoResponse, String> {
    Ok("ok")
}

fn main() {}
