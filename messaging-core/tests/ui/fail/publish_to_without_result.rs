use messaging_core::prelude::*;

#[derive(serde::Deserialize)]
struct MoodCreated {
    score: u8,
}

// Nothing to publish: the handler returns `()`.
#[message_handler(topic = "mood.created", publish_to = "context.aggregated")]
async fn aggregate(mood: MoodCreated) {
    let _ = mood.score;
}

struct NotSerialize;

// Its `Ok` value cannot be published.
#[message_handler(topic = "mood.created", group = "second", publish_to = "context.aggregated")]
async fn aggregate_again(mood: MoodCreated) -> Result<NotSerialize, HandlerError> {
    let _ = mood.score;
    Ok(NotSerialize)
}

fn main() {}
