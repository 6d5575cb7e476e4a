use messaging_core::prelude::*;

#[derive(Default)]
struct C;

#[consumer(topics = ["events"])]
impl C {
    // No name, and nothing to take it from.
    #[on_event]
    async fn no_name(&self, _: serde_json::Value) {}

    #[on_event = "e"]
    async fn name_value(&self, _: Event<serde_json::Value>) {}

    #[on_event(user.created)]
    async fn not_a_string(&self, _: Event<serde_json::Value>) {}

    #[on_event("dup")]
    async fn first(&self, _: Event<serde_json::Value>) {}

    #[on_event("dup")]
    async fn second(&self, _: Event<serde_json::Value>) {}

    #[on_event("a")]
    #[on_event("b")]
    async fn twice(&self, _: Event<serde_json::Value>) {}
}

fn main() {}
