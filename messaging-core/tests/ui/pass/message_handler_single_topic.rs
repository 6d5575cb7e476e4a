// DESIGN §2: one topic, every key, a typed payload validated by its schema.
use messaging_core::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct OrderCreated {
    order_id: u64,
}

struct Db;

#[message_handler(
    topic = "orders.created",
    group = "payments",
    max_retries = 3,
    retry_delay = "5s",
    backoff = "exponential",
    max_delay = "1m",
    timeout = "30s",
    dlq = "orders.created.parked",
    schema = OrderCreated
)]
async fn process_payment(msg: OrderCreated, db: State<Db>) -> anyhow::Result<()> {
    let _ = (msg.order_id, &*db);
    Ok(())
}

// `max_retries = 0` disables retries.
#[message_handler(topic = "orders.cancelled", max_retries = 0)]
async fn cancel(msg: OrderCreated) -> anyhow::Result<()> {
    let _ = msg.order_id;
    Ok(())
}

fn main() {}
