use messaging_core::prelude::*;

#[derive(Default)]
struct C;

#[consumer(topics = ["events"])]
impl C {
    #[on_event("no.self")]
    async fn no_self(_: Event<serde_json::Value>) {}

    #[on_event("mut.self")]
    async fn mut_self(&mut self, _: Event<serde_json::Value>) {}

    #[on_event("owned.self")]
    async fn owned_self(self, _: Event<serde_json::Value>) {}
}

fn main() {}
