use messaging_core::prelude::*;

#[message_handler(topic = "a", retry_delay = "soon")]
async fn not_a_duration(_: serde_json::Value) {}

#[message_handler(topic = "b", retry_delay = 5)]
async fn no_unit(_: serde_json::Value) {}

#[message_handler(topic = "c", timeout = "0s", max_delay = "5")]
async fn zero_timeout(_: serde_json::Value) {}

#[message_handler(topic = "d", retry_delay = "10s", max_delay = "1s")]
async fn cap_below_delay(_: serde_json::Value) {}

fn main() {}
