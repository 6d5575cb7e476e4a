// `idempotency_key` must name a field of the published data, written as in Rust; and
// `idempotent` is a flag of handlers, not of `#[event]`.
use axum::Json;
use axum::http::StatusCode;
use messaging_core::prelude::*;
use serde::Serialize;

#[derive(Serialize)]
struct OrderOut {
    id: u64,
    total: f64,
}

#[event("order.created", topic = "orders", idempotency_key = "order_id")]
async fn create() -> Result<Json<OrderOut>, StatusCode> {
    Ok(Json(OrderOut { id: 1, total: 0.0 }))
}

#[event("order.paid", topic = "orders", idempotency_key = "order-id")]
async fn pay() -> Result<Json<OrderOut>, StatusCode> {
    Ok(Json(OrderOut { id: 1, total: 0.0 }))
}

#[message_handler(topic = "orders", idempotent = "yes")]
async fn charge(_msg: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

fn main() {}
