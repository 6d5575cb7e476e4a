use messaging_core::prelude::*;

// Every mistake of the attribute and of the signature is reported in one build.
#[message_handler(topic = [], max_retries = "many", colour = "red")]
fn handle() -> anyhow::Result<()> {
    Ok(())
}

#[derive(Default)]
struct C;

#[consumer(topics = ["events"], backoff = "random")]
impl C {
    #[on_event("a", retry_delay = "fast")]
    fn a(&mut self) {}

    #[on_event("b")]
    async fn b(&self, event: &Event<String>) {
        let _ = event;
    }
}

fn main() {}
