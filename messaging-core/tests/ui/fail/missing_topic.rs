use messaging_core::prelude::*;

#[message_handler]
async fn no_arguments(_: serde_json::Value) {}

#[message_handler(group = "g")]
async fn no_topic(_: serde_json::Value) {}

#[derive(Default)]
struct C;

#[consumer(group = "g")]
impl C {
    #[on_event("e")]
    async fn e(&self, _: Event<String>) {}
}

fn main() {}
