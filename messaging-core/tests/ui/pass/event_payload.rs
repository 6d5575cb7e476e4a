// `Event<T>` as the first argument: the envelope is decoded, `T` from its data.
use messaging_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct MoodCreated {
    score: u8,
}

impl TypedEvent for MoodCreated {
    const NAME: &'static str = "user.mood.created";
    const TOPIC: &'static str = "aura360.user.events";
}

#[message_handler(topic = "aura360.user.events")]
async fn on_mood(event: Event<MoodCreated>) -> anyhow::Result<()> {
    let _ = (event.id, &event.name, event.data.score, event.score);
    Ok(())
}

// Fully qualified, and untyped data.
#[message_handler(topic = "aura360.user.events", group = "raw")]
async fn on_any(event: messaging_core::Event<serde_json::Value>) -> anyhow::Result<()> {
    let _ = event.data;
    Ok(())
}

fn main() {}
