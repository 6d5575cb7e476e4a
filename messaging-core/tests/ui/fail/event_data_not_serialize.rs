use axum::Json;
use messaging_core::prelude::*;

struct UserOut;

#[event("user.created", topic = "user-events")]
async fn register() -> Result<Json<UserOut>, String> {
    Ok(Json(UserOut))
}

fn main() {}
