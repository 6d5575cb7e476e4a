use messaging_core::prelude::*;

#[message_handler(topic = "a", backoff = "fibonacci")]
async fn handle(_: serde_json::Value) {}

fn main() {}
