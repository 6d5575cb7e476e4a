// DESIGN §2: several topics, untyped payload.
use messaging_core::prelude::*;

#[message_handler(topic = ["orders.created", "orders.updated"])]
async fn sync_inventory(msg: serde_json::Value) -> anyhow::Result<()> {
    let _ = msg;
    Ok(())
}

// A trailing comma in the list and after the last key.
#[message_handler(topic = ["audit.a", "audit.b",], group = "audit",)]
async fn audit(_: serde_json::Value) {}

fn main() {}
