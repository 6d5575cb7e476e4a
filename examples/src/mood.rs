//! The mood-entry pipeline of the AURA360 plan: a mood entry is aggregated into the user's
//! context, the context is vectorized, and the vectors are ingested into a store. Each step
//! is a handler whose result `publish_to` sends on as the next event (acknowledged only once
//! that publish is confirmed), so a slow or failing step never blocks the API.

use std::collections::HashMap;
use std::sync::Mutex;

use messaging_core::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `user.mood.created`, fired by `POST /mood-entries`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct MoodCreated {
    /// Whose entry it is.
    pub user_id: String,
    /// The mood, 1 (low) to 10.
    pub mood_score: u8,
    /// Free tags the user chose.
    pub tags: Vec<String>,
}

messaging_core::typed_event!(
    MoodCreated,
    name = "user.mood.created",
    topic = "aura360.user.events"
);

/// The user's context after a new entry.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ContextAggregated {
    /// Whose context it is.
    pub user_id: String,
    /// Mood entries seen so far.
    pub entries: u32,
    /// Their average score.
    pub average_mood: f32,
}

messaging_core::typed_event!(
    ContextAggregated,
    name = "context.aggregated",
    topic = "aura360.context.aggregated"
);

/// The context as vectors.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ContextVectorized {
    /// Whose context it is.
    pub user_id: String,
    /// The embedding.
    pub vector: Vec<f32>,
    /// The model that made it.
    pub embedding_model: String,
}

messaging_core::typed_event!(
    ContextVectorized,
    name = "context.vectorized",
    topic = "aura360.context.vectorized"
);

/// Mood history per user (stands in for the database).
#[derive(Debug, Default)]
pub struct MoodHistory(Mutex<HashMap<String, Vec<u8>>>);

impl MoodHistory {
    /// Adds a score; returns the user's entry count and average.
    pub fn record(&self, user_id: &str, score: u8) -> (u32, f32) {
        let mut all = self.0.lock().unwrap();
        let scores = all.entry(user_id.to_owned()).or_default();
        scores.push(score);
        let average = scores.iter().map(|&s| f32::from(s)).sum::<f32>() / scores.len() as f32;
        (scores.len() as u32, average)
    }

    /// A user's average score, when there are entries.
    pub fn average(&self, user_id: &str) -> Option<f32> {
        let all = self.0.lock().unwrap();
        let scores = all.get(user_id).filter(|s| !s.is_empty())?;
        Some(scores.iter().map(|&s| f32::from(s)).sum::<f32>() / scores.len() as f32)
    }
}

/// Ingested vectors per user (stands in for Qdrant).
#[derive(Debug, Default)]
pub struct VectorStore(Mutex<HashMap<String, Vec<f32>>>);

impl VectorStore {
    /// Stores a user's vector.
    pub fn insert(&self, user_id: &str, vector: Vec<f32>) {
        self.0.lock().unwrap().insert(user_id.to_owned(), vector);
    }

    /// The vector stored for a user.
    pub fn get(&self, user_id: &str) -> Option<Vec<f32>> {
        self.0.lock().unwrap().get(user_id).cloned()
    }
}

/// Aggregates mood entries into the user's context.
#[derive(Debug, Default)]
pub struct ContextAggregator;

#[consumer(group = "vectordb-context-aggregator", topics = ["aura360.user.events"])]
impl ContextAggregator {
    #[on_event(
        "user.mood.created",
        max_retries = 5,
        retry_delay = "1s",
        backoff = "exponential",
        publish_to = "aura360.context.aggregated"
    )]
    async fn aggregate(
        &self,
        event: Event<MoodCreated>,
        history: State<MoodHistory>,
    ) -> anyhow::Result<ContextAggregated> {
        let (entries, average_mood) = history.record(&event.data.user_id, event.data.mood_score);
        let context = ContextAggregated {
            user_id: event.data.user_id.clone(),
            entries,
            average_mood,
        };
        println!(
            "[context] user {}: {} entries, average mood {:.1}",
            context.user_id, context.entries, context.average_mood
        );
        Ok(context)
    }
}

/// Turns a context into vectors (a toy embedding).
#[message_handler(
    topic = "aura360.context.aggregated",
    group = "vectordb-vectorizer",
    max_retries = 3,
    retry_delay = "2s",
    publish_to = "aura360.context.vectorized"
)]
pub async fn vectorize(event: Event<ContextAggregated>) -> anyhow::Result<ContextVectorized> {
    let c = &event.data;
    let vector = vec![c.average_mood / 10.0, c.entries as f32 / 100.0];
    let vectorized = ContextVectorized {
        user_id: c.user_id.clone(),
        vector,
        embedding_model: "toy-2d".into(),
    };
    println!(
        "[vectorize] user {} -> {:?}",
        vectorized.user_id, vectorized.vector
    );
    Ok(vectorized)
}

/// Stores the vectors.
#[message_handler(topic = "aura360.context.vectorized", group = "vectordb-ingest")]
pub async fn ingest(
    event: Event<ContextVectorized>,
    store: State<VectorStore>,
) -> anyhow::Result<()> {
    store.insert(&event.data.user_id, event.data.vector.clone());
    println!(
        "[ingest] user {} stored ({})",
        event.data.user_id, event.data.embedding_model
    );
    Ok(())
}
