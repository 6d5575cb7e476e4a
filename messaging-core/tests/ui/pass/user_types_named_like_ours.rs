// The decoder is chosen by the type, not its name: user types called `Message` and `Event`
// are JSON like any other `Deserialize` type.
use messaging_core::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Message {
    text: String,
}

#[derive(Deserialize)]
struct Event<T> {
    kind: String,
    body: T,
}

#[message_handler(topic = "chat")]
async fn on_message(message: Message) {
    let _ = message.text;
}

#[message_handler(topic = "audit")]
async fn on_event(event: Event<u32>) {
    let _ = (event.kind, event.body);
}

fn main() {}
