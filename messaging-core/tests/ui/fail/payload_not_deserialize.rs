use messaging_core::prelude::*;

struct NotDeserialize;

#[message_handler(topic = "orders")]
async fn handle(msg: NotDeserialize) {
    let _ = msg;
}

#[message_handler(topic = "orders", group = "g")]
async fn in_event(event: Event<NotDeserialize>) {
    let _ = event;
}

fn main() {}
