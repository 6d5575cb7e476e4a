// `retry = …` is not a key; the grouped form `retry(…)` does not mix with the flat keys.
use messaging_core::prelude::*;

#[message_handler(topic = "a", retry = 3)]
async fn count(body: serde_json::Value) {
    let _ = body;
}

#[message_handler(topic = "b", retry = "5s")]
async fn delay(body: serde_json::Value) {
    let _ = body;
}

#[message_handler(topic = "c", max_retries = 2, retry(max = 3, delay = "5s"), retry_delay = "1s")]
async fn both_forms(body: serde_json::Value) {
    let _ = body;
}

#[message_handler(topic = "d", retry(max_retries = 3, dlq = "d.dead", dealy = "1s"))]
async fn long_names_inside(body: serde_json::Value) {
    let _ = body;
}

fn main() {}
