use messaging_core::prelude::*;

struct Service;

impl Service {
    #[message_handler(topic = "orders")]
    async fn handle(&self, _: serde_json::Value) {}
}

fn main() {}
