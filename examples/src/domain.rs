//! The events of the example service and the payment gateway its handlers call.

use std::collections::HashSet;
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A user as the API returns it; also the data of `user.created`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct User {
    /// Its id.
    pub id: u64,
    /// Its e-mail address.
    pub email: String,
}

/// The body of `orders.created`, published as is (no envelope).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    /// The order.
    pub order_id: u64,
    /// Who placed it.
    pub user_id: u64,
    /// What it costs.
    pub total: f64,
}

/// Published once an order is paid.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCompleted {
    /// The order paid.
    pub order_id: u64,
    /// Who paid.
    pub user_id: u64,
    /// What was charged.
    pub amount: f64,
}

messaging_core::typed_event!(
    PaymentCompleted,
    name = "payment.completed",
    topic = "payment-events"
);

/// A stand-in for a payment provider: the first charge of every order times out (so the
/// retry is visible), and amounts over the limit are refused for good.
#[derive(Debug, Default)]
pub struct PaymentGateway {
    seen: Mutex<HashSet<u64>>,
}

/// Why a charge failed.
#[derive(Debug)]
pub enum ChargeError {
    /// Try again later.
    Timeout,
    /// No retry will help.
    OverLimit(f64),
}

impl std::fmt::Display for ChargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("payment provider timed out"),
            Self::OverLimit(total) => write!(f, "amount {total} is over the 10000 limit"),
        }
    }
}

impl std::error::Error for ChargeError {}

impl PaymentGateway {
    /// The largest amount it accepts.
    pub const LIMIT: f64 = 10_000.0;

    /// Charges an order.
    pub fn charge(&self, order: &OrderCreated) -> Result<(), ChargeError> {
        if order.total > Self::LIMIT {
            return Err(ChargeError::OverLimit(order.total));
        }
        if self.seen.lock().unwrap().insert(order.order_id) {
            return Err(ChargeError::Timeout);
        }
        Ok(())
    }
}
