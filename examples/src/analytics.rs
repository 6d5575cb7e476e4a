//! Reading another team's events in their own shape: the Node.js `beats-upload` service
//! publishes `{"type": "BEAT_CREATED", "payload": {…}}` on `beats-events`; the consumer names
//! those fields and dispatches by `type`. Unknown types are acknowledged and counted.

use messaging_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// The payload of `BEAT_CREATED`, in the publisher's camelCase.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BeatCreated {
    /// The beat.
    pub beat_id: String,
    /// Who uploaded it.
    pub user_id: String,
    /// Where its audio is.
    pub audio_url: String,
}

/// The payload of `METRIC_CALCULATED`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct MetricCalculated {
    /// The metric's name.
    pub metric: String,
    /// Its value.
    pub value: f64,
}

/// Beat metrics, by event type.
#[derive(Debug, Default)]
pub struct BeatMetrics;

#[consumer(group = "analytics-dashboards", topics = ["beats-events"], name_field = "type", data_field = "payload")]
impl BeatMetrics {
    #[on_event("BEAT_CREATED")]
    async fn on_beat_created(&self, event: Event<BeatCreated>) -> anyhow::Result<()> {
        let beat = &event.data;
        println!(
            "[analytics] metrics for beat {} of user {} ({})",
            beat.beat_id, beat.user_id, beat.audio_url
        );
        Ok(())
    }

    #[on_event("METRIC_CALCULATED")]
    async fn on_metric(&self, event: Event<MetricCalculated>) -> anyhow::Result<()> {
        println!("[analytics] {} = {}", event.data.metric, event.data.value);
        Ok(())
    }
}
