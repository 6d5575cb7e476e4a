use messaging_core::prelude::*;

#[message_handler(topic = "a", max_retries = -1)]
async fn negative(_: serde_json::Value) {}

#[message_handler(topic = "b", max_retries = "3")]
async fn string(_: serde_json::Value) {}

#[message_handler(topic = "c", max_retries = 2.5)]
async fn float(_: serde_json::Value) {}

#[message_handler(topic = "d", max_retries = 5000000000)]
async fn too_many(_: serde_json::Value) {}

fn main() {}
