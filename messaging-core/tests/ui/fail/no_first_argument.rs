use messaging_core::prelude::*;

#[message_handler(topic = "orders")]
async fn handle() -> anyhow::Result<()> {
    Ok(())
}

#[derive(Default)]
struct C;

#[consumer(topics = ["events"])]
impl C {
    #[on_event("e")]
    async fn e(&self) {}
}

fn main() {}
