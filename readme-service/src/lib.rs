use messaging_core::prelude::*;
use serde::{Deserialize, Serialize};

// Linked through this crate into every binary that uses it: MESSAGING_BACKEND=redis works.
use messaging_redis as _;

#[derive(Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: u64,
    pub user_id: u64,
    pub total: f64,
}

#[derive(Serialize, Deserialize)]
pub struct UserCreated {
    pub id: u64,
    pub email: String,
}

/// Your connection pool: registered once at start-up, shared by every handler.
pub struct Db;

impl Db {
    async fn charge(&self, order: &OrderCreated) -> anyhow::Result<()> {
        anyhow::ensure!(order.total >= 0.0, "negative total");
        Ok(())
    }
}

// Typed and validated payload; 3 retries 5 s apart, then the dead-letter queue.
#[message_handler(topic = "orders.created", max_retries = 3, retry_delay = "5s", schema = OrderCreated)]
async fn process_payment(order: OrderCreated, db: State<Db>) -> anyhow::Result<()> {
    db.charge(&order).await
}

// One group, several topics, one method per event name.
#[derive(Default)]
struct UserEvents;

#[consumer(group = "user-service", topics = ["user-events"])]
impl UserEvents {
    #[on_event("user.created")]
    async fn on_created(&self, event: Event<UserCreated>, meta: Metadata) -> anyhow::Result<()> {
        println!("{} (attempt {})", event.data.email, meta.attempt);
        Ok(())
    }
}

/// Publishing waits for the broker's acknowledgement.
pub async fn sign_up(
    user: &UserCreated,
    first_order: &OrderCreated,
) -> Result<(), messaging_core::Error> {
    publish_event("user.created", user, "user-events").await?;
    get_producer().send("orders.created", first_order).await
}
