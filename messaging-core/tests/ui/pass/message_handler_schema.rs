// `schema` names the type the body must match; the argument may be that type, another
// type (the body is checked against the schema first), or a path to it.
use messaging_core::prelude::*;
use serde::Deserialize;

mod models {
    #[derive(serde::Deserialize)]
    pub struct OrderCreated {
        pub order_id: u64,
    }
}

#[derive(Deserialize)]
struct OrderId {
    order_id: u64,
}

#[message_handler(topic = "orders.created", schema = models::OrderCreated)]
async fn typed(msg: models::OrderCreated) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

#[message_handler(topic = "orders.created", group = "untyped", schema = models::OrderCreated)]
async fn untyped(msg: serde_json::Value) -> anyhow::Result<()> {
    let _ = msg;
    Ok(())
}

#[message_handler(topic = "orders.created", group = "narrow", schema = models::OrderCreated)]
async fn narrow(msg: OrderId) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

fn main() {}
