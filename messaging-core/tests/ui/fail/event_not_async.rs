use messaging_core::prelude::*;

#[event("user.created", topic = "user-events")]
fn register() -> Result<String, String> {
    Ok("id".into())
}

fn main() {}
