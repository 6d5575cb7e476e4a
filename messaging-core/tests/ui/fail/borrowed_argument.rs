use messaging_core::prelude::*;

#[message_handler(topic = "orders")]
async fn handle(msg: &str, meta: &Metadata) {
    let _ = (msg, meta);
}

#[message_handler(topic = "orders", group = "g")]
async fn opaque(msg: impl serde::de::DeserializeOwned) {
    let _ = msg;
}

fn main() {}
