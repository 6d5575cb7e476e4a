//! Consumer lag on RabbitMQ. A group is one queue bound to all its topics, so a group has
//! one row, whose topic is its topics joined by `,`.
//!
//! AMQP tells how many messages are ready in a queue and how many consumers it has (a
//! passive `queue.declare`), not how many were delivered and are unacknowledged: only the
//! management plugin's HTTP API does, which many brokers do not enable (this crate does
//! not require it, nor a second endpoint and credentials). The consumers of this process
//! know what they hold, though, so:
//!
//! - no consumer on the queue: nothing is held, `lag` is the ready count, `pending` 0;
//! - every consumer of the queue in this process (the running service's own `/metrics`):
//!   `pending` is what they hold, `lag` ready plus pending;
//! - consumers elsewhere (`consumer lag` next to a running service): `pending` is unknown
//!   (`None`) and `lag` counts the ready messages and what this process holds, so it reads
//!   short by at most the prefetch of each consumer of the other processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use messaging_core::LagRow;

use crate::broker::is_not_found;
use crate::consumer::Pending;
use crate::error::RabbitError;
use crate::publisher::Publisher;
use crate::topology;

/// The consumers of this process, by the queue they consume, each with what it holds.
#[derive(Default)]
pub(crate) struct Members {
    by_queue: Mutex<HashMap<String, Vec<Weak<Pending>>>>,
}

impl Members {
    /// Counts a new consumer of `queue`, for as long as its deliveries are tracked.
    pub(crate) fn add(&self, queue: &str, held: &Arc<Pending>) {
        let mut by_queue = self.by_queue.lock().unwrap_or_else(PoisonError::into_inner);
        let members = by_queue.entry(queue.to_owned()).or_default();
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(held));
    }

    /// How many consumers of `queue` this process has, and how many deliveries they hold.
    fn of(&self, queue: &str) -> (u32, u64) {
        let mut by_queue = self.by_queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(members) = by_queue.get_mut(queue) else {
            return (0, 0);
        };
        members.retain(|m| m.strong_count() > 0);
        let held = members
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.held() as u64)
            .sum();
        (u32::try_from(members.len()).unwrap_or(u32::MAX), held)
    }
}

/// The lag of `group`: its queue's ready messages and what its consumers hold; no row when
/// the queue was never declared.
pub(crate) async fn lag(
    publisher: &Publisher,
    members: &Members,
    exchange: &str,
    group: &str,
    topics: &[String],
) -> Result<Vec<LagRow>, RabbitError> {
    let queue = topology::group_queue(exchange, group)?;
    let channel = publisher.side_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = match channel
        .queue_declare(queue.clone(), passive, FieldTable::default())
        .await
    {
        Ok(declared) => declared,
        // NOT_FOUND closes the side channel.
        Err(error) if is_not_found(&error) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    if let Err(error) = channel.close(200, "lag read".into()).await {
        tracing::debug!(%error, "closing the lag channel failed; its connection closes it");
    }
    let ready = u64::from(declared.message_count());
    let (local, held) = members.of(queue.as_str());
    let (lag, pending) = estimate(ready, declared.consumer_count(), local, held);
    Ok(vec![LagRow {
        group: group.to_owned(),
        topic: topics.join(","),
        partition: None,
        lag,
        pending,
    }])
}

/// (lag, pending) from the queue's `ready` count and `consumers`, and the `local` consumers
/// of this process holding `held` deliveries.
fn estimate(ready: u64, consumers: u32, local: u32, held: u64) -> (u64, Option<u64>) {
    match consumers {
        // What a consumer held when its channel closed is ready again.
        0 => (ready, Some(0)),
        n if n == local => (ready + held, Some(held)),
        _ => (ready + held, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_known_when_no_consumer_or_only_ours_hold_messages() {
        assert_eq!(estimate(5000, 0, 0, 0), (5000, Some(0)));
        // Our consumer's channel died: RabbitMQ put what it held back, ready.
        assert_eq!(estimate(5000, 0, 1, 256), (5000, Some(0)));
        assert_eq!(estimate(4744, 1, 1, 256), (5000, Some(256)));
        // Another process consumes too: what it holds is unknown.
        assert_eq!(estimate(4488, 2, 1, 256), (4744, None));
        assert_eq!(estimate(4744, 1, 0, 0), (4744, None));
    }
}
