use messaging_core::prelude::*;

#[derive(Default)]
struct C;

#[consumer(topics = ["events"])]
impl C {
    #[on_event]
    async fn no_name(&self, _: Event<serde_json::Value>) {}

    #[on_event(max_retries = 1)]
    async fn key_first(&self, _: Event<serde_json::Value>) {}

    #[on_event("dup")]
    async fn first(&self, _: Event<serde_json::Value>) {}

    #[on_event("dup")]
    async fn second(&self, _: Event<serde_json::Value>) {}

    #[on_event("a")]
    #[on_event("b")]
    async fn twice(&self, _: Event<serde_json::Value>) {}
}

fn main() {}
