use std::rc::Rc;

use messaging_core::prelude::*;

async fn later() {}

#[message_handler(topic = "orders")]
async fn handle(_: serde_json::Value) {
    let not_send = Rc::new(1);
    later().await;
    let _ = not_send;
}

fn main() {}
