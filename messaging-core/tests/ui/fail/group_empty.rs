use messaging_core::prelude::*;

#[message_handler(topic = "orders", group = "")]
async fn handle(body: serde_json::Value) {
    let _ = body;
}

#[derive(Default)]
struct Orders;

#[consumer(topics = ["orders"], group = " ")]
impl Orders {
    #[on_event("order.created")]
    async fn created(&self, event: Event<serde_json::Value>) {
        let _ = event;
    }
}

fn main() {}
