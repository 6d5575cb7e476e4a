//! The `disabled` backend, the emergency switch: publishing logs and drops (and counts);
//! consuming starts nothing.

use std::sync::Arc;

use crate::broker::{Acker, Broker, BrokerFactory, Consumer, Subscription};
use crate::error::BrokerError;
use crate::handler::BoxFuture;
use crate::message::{Message, OutgoingMessage};
use crate::metrics::metrics;

const NAME: &str = "disabled";

/// A broker that drops everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct DisabledBroker;

impl Broker for DisabledBroker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        metrics().record_dropped();
        tracing::info!(topic = %message.topic, bytes = message.payload.len(), "messaging disabled: message dropped");
        Box::pin(async { Ok(()) })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        tracing::info!(group = %subscription.group, topics = ?subscription.topics, "messaging disabled: not consuming");
        Box::pin(async { Ok(Box::new(Idle) as Box<dyn Consumer>) })
    }
}

struct Idle;

impl Consumer for Idle {
    fn next_batch(&mut self, _max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(std::future::pending())
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::new(Idle)
    }
}

impl Acker for Idle {
    fn ack<'a>(&'a self, _message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
}

inventory::submit! {
    BrokerFactory::new(NAME, |_config| {
        Box::pin(async { Ok(Arc::new(DisabledBroker) as Arc<dyn Broker>) })
    })
}
