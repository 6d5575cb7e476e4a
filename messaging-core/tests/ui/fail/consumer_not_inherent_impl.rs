use messaging_core::prelude::*;

#[consumer(topics = ["events"])]
struct NotAnImpl;

trait Handlers {
    async fn e(&self, event: Event<serde_json::Value>);
}

#[derive(Default)]
struct C;

#[consumer(topics = ["events"])]
impl Handlers for C {
    #[on_event("e")]
    async fn e(&self, _: Event<serde_json::Value>) {}
}

#[derive(Default)]
struct Empty;

#[consumer(topics = ["events"])]
impl Empty {
    async fn not_marked(&self, _: Event<serde_json::Value>) {}
}

fn main() {}
