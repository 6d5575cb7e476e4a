use messaging_core::prelude::*;

struct NoDefault {
    _pool: u32,
}

#[consumer(topics = ["events"])]
impl NoDefault {
    #[on_event("e")]
    async fn e(&self, _: Event<serde_json::Value>) {}
}

fn main() {}
