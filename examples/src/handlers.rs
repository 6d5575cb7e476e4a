//! The handlers: registered at link time by the macros, run by any runtime that links this
//! crate (the quick start, `bin/consumer`, tests).

use messaging_core::prelude::*;

use crate::domain::{ChargeError, OrderCreated, PaymentCompleted, PaymentGateway, User};

/// Charges each new order; a timeout is retried (3 times, 200 ms apart), an amount over the
/// limit goes straight to `orders.created.dlq`. Idempotent: an order published twice with
/// one idempotency key (a client's retry of `POST /orders`) is charged once.
#[message_handler(topic = "orders.created", group = "payments", max_retries = 3, retry_delay = "200ms", schema = OrderCreated, idempotent)]
pub async fn process_payment(
    order: OrderCreated,
    gateway: State<PaymentGateway>,
    producer: Producer,
    meta: Metadata,
) -> Result<(), HandlerError> {
    println!(
        "[payments] order {} for {:.2}, attempt {}",
        order.order_id, order.total, meta.attempt
    );
    match gateway.charge(&order) {
        Ok(()) => {}
        Err(error @ ChargeError::OverLimit(_)) => return Err(HandlerError::permanent(error)),
        Err(error) => {
            println!("[payments] order {}: {error}; will retry", order.order_id);
            return Err(HandlerError::retryable(error));
        }
    }
    let paid = PaymentCompleted {
        order_id: order.order_id,
        user_id: order.user_id,
        amount: order.total,
    };
    producer.publish(&paid).await?;
    println!("[payments] order {} paid", order.order_id);
    Ok(())
}

/// Notifications by event name, one group for both topics.
#[derive(Debug, Default)]
pub struct Notifications;

#[consumer(group = "notifications", topics = ["user-events", "payment-events"])]
impl Notifications {
    #[on_event("user.created")]
    async fn welcome(&self, event: Event<User>) -> anyhow::Result<()> {
        println!(
            "[notifications] welcome mail to {} (user {})",
            event.data.email, event.data.id
        );
        Ok(())
    }

    #[on_event("payment.completed")]
    async fn receipt(&self, event: Event<PaymentCompleted>) -> anyhow::Result<()> {
        println!(
            "[notifications] receipt for order {}: {:.2}",
            event.data.order_id, event.data.amount
        );
        Ok(())
    }
}
