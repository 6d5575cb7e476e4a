use messaging_core::prelude::*;

// A misspelt key, a key of another macro, a key that does not exist: all three reported.
#[message_handler(topic = "orders", max_retry = 3, topics = ["a"], colour = "red")]
async fn handle(_: serde_json::Value) {}

#[derive(Default)]
struct C;

#[consumer(topic = "events")]
impl C {
    #[on_event("e", schema = String)]
    async fn e(&self, _: Event<String>) {}
}

fn main() {}
