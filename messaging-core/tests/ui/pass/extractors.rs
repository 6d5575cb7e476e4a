// Extra arguments are extractors: `State<T>`, `Metadata`, `Producer`, and any type that
// implements `FromContext`. Argument patterns are free, as in axum.
use messaging_core::prelude::*;
use messaging_core::{FromContext, HandlerError, Invocation};

struct Db;
struct Cache;

struct Attempt(u32);

impl FromContext for Attempt {
    fn from_context(invocation: &Invocation) -> Result<Self, HandlerError> {
        Ok(Self(invocation.attempt))
    }
}

#[message_handler(topic = "orders.created")]
async fn every_extractor(
    msg: serde_json::Value,
    db: State<Db>,
    State(cache): State<Cache>,
    meta: Metadata,
    producer: Producer,
    Attempt(attempt): Attempt,
) -> anyhow::Result<()> {
    let _ = (msg, &*db, &*cache, meta.topic, meta.attempt, attempt);
    producer
        .send("orders.audited", &serde_json::json!({"ok": true}))
        .await?;
    Ok(())
}

#[message_handler(topic = "orders.created", group = "patterns")]
async fn patterns(mut msg: serde_json::Value, _: Metadata) -> anyhow::Result<()> {
    msg["seen"] = true.into();
    Ok(())
}

fn main() {}
