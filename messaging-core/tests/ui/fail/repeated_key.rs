use messaging_core::prelude::*;

#[message_handler(topic = "orders", max_retries = 1, topic = "other", max_retries = 2)]
async fn handle(_: serde_json::Value) {}

fn main() {}
