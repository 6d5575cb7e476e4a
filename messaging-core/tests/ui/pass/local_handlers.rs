// Handlers declared inside a function body (as a test might) register like any other.
use messaging_core::prelude::*;

fn main() {
    #[message_handler(topic = "local.orders")]
    async fn local(msg: serde_json::Value) -> anyhow::Result<()> {
        let _ = msg;
        Ok(())
    }

    #[derive(Default)]
    struct LocalConsumer;

    #[consumer(topics = ["local.events"])]
    impl LocalConsumer {
        #[on_event("local.happened")]
        async fn happened(&self, _: Event<serde_json::Value>) {}
    }

    #[event("local.published", topic = "local.events")]
    async fn publish() -> Result<u32, String> {
        Ok(1)
    }

    let _ = publish();
}
