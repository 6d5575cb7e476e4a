use messaging_core::prelude::*;

#[message_handler(topic = "")]
async fn empty_string(_: serde_json::Value) {}

#[message_handler(topic = [])]
async fn empty_array(_: serde_json::Value) {}

#[message_handler(topic = ["orders", " "])]
async fn blank_in_array(_: serde_json::Value) {}

#[message_handler(topic = "orders created")]
async fn white_space(_: serde_json::Value) {}

fn main() {}
