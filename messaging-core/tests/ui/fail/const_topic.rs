// A topic from a `const` is checked as a literal would be, and must be a `&str`.
use messaging_core::prelude::*;

const NOWHERE: &str = "";
const NUMBER: u32 = 7;
const SPACED: &str = "orders created";

#[message_handler(topic = NOWHERE)]
async fn empty(body: serde_json::Value) {
    let _ = body;
}

#[message_handler(topic = NUMBER)]
async fn not_a_str(body: serde_json::Value) {
    let _ = body;
}

#[derive(Default)]
struct Orders;

#[consumer(topics = ["orders", SPACED])]
impl Orders {
    #[on_event("order.created")]
    async fn created(&self, event: Event<serde_json::Value>) {
        let _ = event;
    }
}

fn main() {}
