//! The mood pipeline end to end on the test harness: one mood entry becomes a stored vector
//! through three handlers and two follow-up events.

use messaging_core::testing::TestHarness;
use messaging_examples::mood::{MoodCreated, VectorStore};

#[tokio::test(start_paused = true)]
async fn a_mood_entry_ends_as_a_stored_vector() {
    let store = std::sync::Arc::new(VectorStore::default());
    let harness = TestHarness::builder()
        .runtime(|r| messaging_examples::with_state(r).state_arc(store.clone()))
        .start()
        .await
        .unwrap();
    let entry = MoodCreated {
        user_id: "u-9".into(),
        mood_score: 8,
        tags: vec![],
    };
    harness.producer().publish(&entry).await.unwrap();
    harness.wait_idle().await;
    assert_eq!(store.get("u-9"), Some(vec![0.8, 0.01]));
    for topic in [
        "aura360.user.events",
        "aura360.context.aggregated",
        "aura360.context.vectorized",
    ] {
        assert!(
            harness.dlq(topic).is_empty(),
            "{topic} dead-lettered something"
        );
    }
    harness.shutdown().await;
}
