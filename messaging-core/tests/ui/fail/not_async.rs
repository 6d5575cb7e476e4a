use messaging_core::prelude::*;

#[message_handler(topic = "orders")]
fn handle(_: serde_json::Value) {}

#[derive(Default)]
struct C;

#[consumer(topics = ["events"])]
impl C {
    #[on_event("e")]
    fn e(&self, _: Event<serde_json::Value>) {}
}

fn main() {}
