// DESIGN §2: a consumer type, one group, several topics, one method per event name; other
// methods and attributes are left alone.
use std::sync::atomic::{AtomicU64, Ordering};

use messaging_core::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct UserCreated {
    id: u64,
}

#[derive(Deserialize)]
struct PaymentCompleted {
    amount: f64,
}

struct Db;

#[derive(Default)]
struct OrderEvents {
    seen: AtomicU64,
}

#[consumer(group = "order-service", topics = ["user-events", "payment-events"], max_retries = 5, backoff = "linear")]
impl OrderEvents {
    /// Doc comments stay.
    #[on_event("user.created")]
    async fn on_user_created(
        &self,
        event: Event<UserCreated>,
        db: State<Db>,
    ) -> anyhow::Result<()> {
        self.count();
        let _ = (event.data.id, &*db);
        Ok(())
    }

    #[on_event(
        "payment.completed",
        max_retries = 1,
        retry_delay = "250ms",
        dlq = "payments.dead"
    )]
    async fn on_paid(&self, event: Event<PaymentCompleted>) -> anyhow::Result<()> {
        let _ = event.data.amount;
        Ok(())
    }

    #[on_event("user.deleted")]
    async fn on_user_deleted(&self, event: Event<serde_json::Value>, meta: Metadata) {
        let _ = (event, meta.attempt);
    }

    // `Self` in argument types is fine.
    #[on_event("user.audited")]
    async fn on_audit(&self, _: Event<serde_json::Value>, _: State<Self>) {}

    fn count(&self) {
        self.seen.fetch_add(1, Ordering::Relaxed);
    }

    #[allow(dead_code)]
    pub fn new() -> Self {
        Self::default()
    }
}

// A bare `#[on_event]` takes the event name from the data type's `TypedEvent` impl.
#[derive(Deserialize, serde::Serialize)]
struct MoodCreated {
    score: u8,
}

impl TypedEvent for MoodCreated {
    const NAME: &'static str = "user.mood.created";
    const TOPIC: &'static str = "aura360.user.events";
}

#[derive(Default)]
struct Moods;

#[consumer(topics = ["aura360.user.events"])]
impl Moods {
    #[on_event]
    async fn created(&self, event: Event<MoodCreated>) {
        let _ = event.data.score;
    }

    #[on_event(max_retries = 0)]
    async fn also_typed(&self, event: Event<Typed2>) {
        let _ = event;
    }
}

#[derive(Deserialize, serde::Serialize)]
struct Typed2;

impl TypedEvent for Typed2 {
    const NAME: &'static str = "user.mood.deleted";
    const TOPIC: &'static str = "aura360.user.events";
}

// The group defaults to the type's name; one topic may be a plain string.
#[derive(Default)]
struct Audit;

#[consumer(topics = "audit-events")]
impl Audit {
    #[on_event("audit.logged")]
    async fn logged(&self, _: Event<serde_json::Value>) {}
}

fn main() {}
