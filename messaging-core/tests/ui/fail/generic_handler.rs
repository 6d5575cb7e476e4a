use messaging_core::prelude::*;

#[message_handler(topic = "orders")]
async fn handle<T: serde::de::DeserializeOwned>(msg: T) {
    let _ = msg;
}

#[derive(Default)]
struct Generic<T>(T);

#[consumer(topics = ["events"])]
impl<T: Default + Send + Sync + 'static> Generic<T> {
    #[on_event("e")]
    async fn e(&self, _: Event<serde_json::Value>) {}
}

fn main() {}
