use messaging_core::prelude::*;

struct Db;

#[message_handler(topic = "orders")]
async fn handle(_: serde_json::Value, db: Db) {
    let _ = db;
}

fn main() {}
