//! Pipelines (issue 24): with `publish_to`, a handler's `Ok` value goes out as an event on
//! that topic, under its `TypedEvent` name (else the topic's), with the key of the message
//! handled; the message is acknowledged only after that publish. A failed handler publishes
//! nothing.

use std::sync::Mutex;

use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use messaging_core::{Broker, Message};
use serde::{Deserialize, Serialize};

const MOOD: &str = "publish-to.mood";
const CONTEXT: &str = "publish-to.context";
const SUMMARY: &str = "publish-to.summary";

#[derive(Serialize, Deserialize)]
struct MoodCreated {
    user_id: String,
    score: u8,
}

#[derive(Serialize, Deserialize)]
struct ContextAggregated {
    user_id: String,
    entries: u32,
}

impl TypedEvent for ContextAggregated {
    const NAME: &'static str = "context.aggregated";
    const TOPIC: &'static str = CONTEXT;
}

/// Not a typed event: published under the topic's name.
#[derive(Serialize)]
struct Summary {
    line: String,
}

#[message_handler(topic = MOOD, publish_to = CONTEXT)]
async fn aggregate(mood: MoodCreated) -> anyhow::Result<ContextAggregated> {
    anyhow::ensure!(mood.score <= 10, "score {} is out of range", mood.score);
    Ok(ContextAggregated {
        user_id: mood.user_id,
        entries: 1,
    })
}

#[derive(Default)]
struct Summaries;

#[consumer(topics = [CONTEXT])]
impl Summaries {
    #[on_event("context.aggregated", publish_to = "publish-to.summary")]
    async fn summarize(&self, event: Event<ContextAggregated>) -> Result<Summary, HandlerError> {
        Ok(Summary {
            line: format!("{} has {} entries", event.data.user_id, event.data.entries),
        })
    }
}

static SUMMARIES: Mutex<Vec<(String, Option<String>, String)>> = Mutex::new(Vec::new());

#[message_handler(topic = SUMMARY)]
async fn collect(event: Event<serde_json::Value>, meta: Metadata) -> Result<(), HandlerError> {
    SUMMARIES.lock().unwrap().push((
        event.name.clone(),
        meta.key_str().map(str::to_owned),
        event.data["line"].as_str().unwrap_or_default().to_owned(),
    ));
    Ok(())
}

async fn on(harness: &TestHarness, topic: &str) -> Vec<Message> {
    harness.broker().browse(topic, 100).await.unwrap()
}

#[tokio::test]
async fn results_flow_down_the_pipeline_with_their_key_and_name() {
    let harness = TestHarness::builder().start().await.unwrap();
    let mood = MoodCreated {
        user_id: "u-7".into(),
        score: 8,
    };
    harness
        .producer()
        .send_with(MOOD, &mood, SendOptions::key("u-7"))
        .await
        .unwrap();
    let out_of_range = MoodCreated {
        user_id: "u-8".into(),
        score: 11,
    };
    harness
        .producer()
        .send_with(MOOD, &out_of_range, SendOptions::key("u-8"))
        .await
        .unwrap();
    harness.wait_idle().await;

    let context = on(&harness, CONTEXT).await;
    assert_eq!(context.len(), 1, "only the handled mood published a result");
    let published = &context[0];
    assert_eq!(published.header("x-event-name"), Some("context.aggregated"));
    assert_eq!(published.key_str(), Some("u-7"), "the key goes on");
    let event: Event<ContextAggregated> = serde_json::from_slice(&published.payload).unwrap();
    assert_eq!(event.data.user_id, "u-7");
    assert_eq!(
        harness.dlq(MOOD).len(),
        1,
        "the failed one is dead-lettered"
    );

    assert_eq!(
        *SUMMARIES.lock().unwrap(),
        [(
            SUMMARY.to_owned(),
            Some("u-7".to_owned()),
            "u-7 has 1 entries".to_owned()
        )],
        "the second step's result, named after its topic"
    );
    let listed = messaging_core::registered_handlers();
    let aggregate = listed.iter().find(|h| h.name() == "aggregate").unwrap();
    assert_eq!(aggregate.publishes_to(), Some(CONTEXT));
    harness.shutdown().await;
}
