// DESIGN §2, foreign envelopes: the Node services send `{"type": …, "payload": {…}}`.
use messaging_core::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Beat {
    bpm: u32,
}

#[derive(Default)]
struct Analytics;

#[consumer(group = "analytics", topics = ["beats"], name_field = "type", data_field = "payload")]
impl Analytics {
    #[on_event("BEAT_CREATED")]
    async fn beat_created(&self, event: Event<Beat>) -> anyhow::Result<()> {
        let _ = event.data.bpm;
        Ok(())
    }
}

// Only one of the two fields renamed: the other keeps its default.
#[derive(Default)]
struct Legacy;

#[consumer(topics = ["legacy"], name_field = "event")]
impl Legacy {
    #[on_event("legacy.happened")]
    async fn happened(&self, event: Event<serde_json::Value>) {
        let _ = event.data;
    }
}

fn main() {}
