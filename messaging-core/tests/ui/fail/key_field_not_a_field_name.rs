// `key_field` names a Rust field, so it must be one's name.
use axum::Json;
use axum::http::StatusCode;
use messaging_core::prelude::*;
use serde::Serialize;

#[derive(Serialize)]
struct UserOut {
    id: u64,
}

#[event("user.renamed", topic = "user-events", key_field = "user-id")]
async fn rename() -> Result<Json<UserOut>, StatusCode> {
    Ok(Json(UserOut { id: 1 }))
}

fn main() {}
