// A bare #[on_event] on `Event<serde_json::Value>`: `Value` cannot declare an event name (it is
// not the user's type), so the fix is to write the name in the attribute.
use messaging_core::prelude::*;

#[derive(Default)]
struct Users;

#[consumer(topics = ["user-events"])]
impl Users {
    #[on_event]
    async fn created(&self, event: Event<serde_json::Value>) {
        let _ = event.data;
    }

    #[on_event(max_retries = 1)]
    async fn raw(&self, body: bytes::Bytes) {
        let _ = body;
    }
}

fn main() {}
