// Idempotent handlers and idempotency keys in every form.
use axum::Json;
use axum::http::StatusCode;
use messaging_core::prelude::*;
use serde::Serialize;

#[derive(Serialize)]
struct OrderOut {
    id: u64,
}

#[event("order.created", topic = "orders", key_field = "id", idempotency_key = "id")]
async fn create() -> Result<Json<OrderOut>, StatusCode> {
    Ok(Json(OrderOut { id: 1 }))
}

#[message_handler(topic = "orders", idempotent)]
async fn charge(_msg: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

#[message_handler(topic = "orders.paid", max_retries = 2, idempotent = true)]
async fn ship(_msg: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

#[derive(Default)]
struct Payments;

#[consumer(group = "payments", topics = ["payment-events"])]
impl Payments {
    #[on_event("payment.completed", idempotent)]
    async fn on_paid(&self, _event: Event<serde_json::Value>) -> anyhow::Result<()> {
        Ok(())
    }
}

fn main() {}
