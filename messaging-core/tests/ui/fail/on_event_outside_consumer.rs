use messaging_core::prelude::*;

#[derive(Default)]
struct Plain;

impl Plain {
    #[on_event("user.created")]
    async fn on_user_created(&self, _: Event<serde_json::Value>) {}
}

#[on_event("user.deleted")]
async fn free(_: Event<serde_json::Value>) {}

fn main() {}
