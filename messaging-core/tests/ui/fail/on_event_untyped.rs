use messaging_core::prelude::*;

#[derive(serde::Deserialize)]
struct MoodCreated {
    score: u8,
}

#[derive(Default)]
struct C;

#[consumer(topics = ["events"])]
impl C {
    // No name, and the data type does not declare one.
    #[on_event(max_retries = 1)]
    async fn created(&self, event: Event<MoodCreated>) {
        let _ = event.data.score;
    }
}

fn main() {}
