// `crate = "…"` takes a path as a string, on the macros that generate code.
use messaging_core::prelude::*;

#[message_handler(topic = "a", crate = "not a path")]
async fn spaced(body: serde_json::Value) {
    let _ = body;
}

#[message_handler(topic = "b", crate = messaging_core)]
async fn unquoted(body: serde_json::Value) {
    let _ = body;
}

#[derive(Default)]
struct C;

#[consumer(topics = ["c"])]
impl C {
    #[on_event("e", crate = "messaging_core")]
    async fn e(&self, event: Event<serde_json::Value>) {
        let _ = event;
    }
}

fn main() {}
