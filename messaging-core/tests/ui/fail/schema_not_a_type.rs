use messaging_core::prelude::*;

#[message_handler(topic = "orders", schema = "OrderCreated")]
async fn handle(_: serde_json::Value) {}

struct NotDeserialize;

#[message_handler(topic = "orders", group = "g", schema = NotDeserialize)]
async fn schema_not_deserialize(_: serde_json::Value) {}

fn main() {}
