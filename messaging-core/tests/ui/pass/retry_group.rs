// The design card's spelling: `retry(…)` groups the retry keys.
use messaging_core::prelude::*;

#[message_handler(topic = "orders", retry(max = 3, delay = "5s", backoff = "linear"))]
async fn grouped(body: serde_json::Value) {
    let _ = body;
}

#[message_handler(
    topic = "orders",
    group = "all",
    retry(max = 5, delay = "1s", backoff = "exponential", max_delay = "30s", timeout = "10s"),
    dlq = "orders.dead"
)]
async fn every_key(body: serde_json::Value) {
    let _ = body;
}

#[derive(Default)]
struct Payments;

#[consumer(topics = ["payments"], retry(max = 1))]
impl Payments {
    #[on_event("payment.completed", retry(delay = "250ms"))]
    async fn completed(&self, event: messaging_core::Event<serde_json::Value>) {
        let _ = event;
    }
}

fn main() {}
