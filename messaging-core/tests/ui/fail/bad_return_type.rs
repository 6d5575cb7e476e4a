use messaging_core::prelude::*;

#[message_handler(topic = "a")]
async fn option(_: serde_json::Value) -> Option<()> {
    None
}

struct NotAnError;

#[message_handler(topic = "b")]
async fn error_type(_: serde_json::Value) -> Result<(), NotAnError> {
    Err(NotAnError)
}

fn main() {}
