//! Helpers of the integration tests. They need Redis on 127.0.0.1:6379
//! (`scripts/start-redis.sh`) and fail, never skip, without it.
#![allow(dead_code)]

use std::time::Duration;

use messaging_core::broker::{Consumer, StartFrom, Subscription};
use messaging_core::{Broker, Message};
use messaging_redis::{RedisBroker, RedisOptions};

pub const URL: &str = "redis://127.0.0.1:6379/0";

/// A fresh name, so runs and tests never see each other's streams and groups.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

pub async fn connect(options: RedisOptions) -> RedisBroker {
    RedisBroker::connect(URL, options)
        .await
        .unwrap_or_else(|e| panic!("Redis must run on {URL} (scripts/start-redis.sh): {e}"))
}

/// Options with a short reclaim idle time, for tests that wait for reclaiming.
pub fn quick() -> RedisOptions {
    RedisOptions {
        reclaim_idle: Duration::from_millis(500),
        block: Duration::from_millis(200),
        ..RedisOptions::default()
    }
}

pub fn subscription(group: &str, topics: &[&str], start: StartFrom) -> Subscription {
    Subscription {
        group: group.to_owned(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        start,
        prefetch: 100,
    }
}

/// Reads until `want` messages arrived or `limit` passed.
pub async fn collect(consumer: &mut dyn Consumer, want: usize, limit: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, consumer.next_batch(want - got.len())).await {
            Ok(batch) => got.extend(
                batch
                    .expect("next_batch failed")
                    .iter()
                    .map(|m| (**m).clone()),
            ),
            Err(_) => break,
        }
    }
    got
}

/// Nothing arrives within `wait`.
pub async fn assert_nothing(consumer: &mut dyn Consumer, wait: Duration) {
    if let Ok(batch) = tokio::time::timeout(wait, consumer.next_batch(10)).await {
        panic!("expected nothing, got {:?}", batch.map(|b| b.len()));
    }
}

pub async fn redis_cmd<T: redis::FromRedisValue>(broker: &RedisBroker, cmd: &mut redis::Cmd) -> T {
    cmd.query_async(&mut broker.connection())
        .await
        .expect("redis command failed")
}

pub async fn publish_n(broker: &dyn Broker, topic: &str, n: usize) {
    for i in 0..n {
        broker
            .publish(messaging_core::OutgoingMessage::new(topic, i.to_string()))
            .await
            .expect("publish failed");
    }
}

/// `XPENDING <topic> <group>`: the count, the id range, and the count per consumer.
pub type PendingSummary = (
    usize,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// How many entries of `topic` are pending in `group`.
pub async fn pending(broker: &RedisBroker, topic: &str, group: &str) -> usize {
    pending_summary(broker, topic, group).await.0
}

/// Entries pending in `group` under consumers whose name starts with `prefix`.
pub async fn pending_of(broker: &RedisBroker, topic: &str, group: &str, prefix: &str) -> usize {
    pending_summary(broker, topic, group)
        .await
        .3
        .unwrap_or_default()
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, count)| count.parse::<usize>().unwrap())
        .sum()
}

async fn pending_summary(broker: &RedisBroker, topic: &str, group: &str) -> PendingSummary {
    redis_cmd(broker, redis::cmd("XPENDING").arg(topic).arg(group)).await
}

/// Waits (up to 30 s) until `topic` has `want` entries pending in `group`, and returns the
/// count then (the caller asserts on it); acknowledgements are sent in the background.
pub async fn settle_pending(broker: &RedisBroker, topic: &str, group: &str, want: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = pending(broker, topic, group).await;
        if now == want || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
