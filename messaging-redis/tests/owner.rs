//! A message in back-off stays with its live owner (issue 22, done-when 4): the owner keeps
//! re-claiming what it holds, so another member's `XAUTOCLAIM` never takes it, even when the
//! back-off is much longer than the reclaim idle time. Needs Redis on 127.0.0.1:6379.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use messaging_core::broker::StartFrom;
use messaging_core::{
    Broker, HandlerError, HandlerSpec, Invocation, OutgoingMessage, RetryPolicy, Runtime,
};
use messaging_redis::RedisBroker;
use tokio::time::Instant;

async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `XPENDING <topic> <group> - + 100`: id, owner, idle milliseconds, deliveries.
async fn pending_entries(
    broker: &RedisBroker,
    topic: &str,
    group: &str,
) -> Vec<(String, String, u64, u64)> {
    redis_cmd(
        broker,
        redis::cmd("XPENDING")
            .arg(topic)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(100),
    )
    .await
}

/// A member of `group` on a broker whose reclaim idle time is 2 s, recording the payloads
/// its handler sees; `fail` makes that handler fail every attempt.
async fn member(
    prefix: &str,
    topic: &str,
    group: &str,
    fail: bool,
) -> (RedisBroker, Runtime, Arc<Mutex<Vec<String>>>) {
    let url = format!("{URL}?reclaim_idle=2s&block=200ms&consumer_prefix={prefix}");
    let redis = RedisBroker::connect_url(&url)
        .await
        .unwrap_or_else(|e| panic!("Redis must run on {URL}: {e}"));
    assert_eq!(redis.options().reclaim_idle, Duration::from_secs(2));
    let broker = redis.clone().into_dyn();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let seen = Arc::clone(&seen);
        HandlerSpec::new("owner_test", [topic.to_owned()], move |inv: Invocation| {
            let seen = Arc::clone(&seen);
            async move {
                let payload = String::from_utf8_lossy(&inv.message.payload).into_owned();
                seen.lock().unwrap().push(payload);
                if fail {
                    return Err(HandlerError::retryable("still failing"));
                }
                Ok(())
            }
        })
        .group(group)
        // 10 s of back-off in all, five times the reclaim idle time.
        .retry(RetryPolicy::new(2, Duration::from_secs(5)))
    };
    let runtime = Runtime::builder()
        .broker(Arc::clone(&broker))
        .without_registered()
        .install_global_producer(false)
        .concurrency(4)
        .handler(handler)
        .start()
        .await
        .expect("runtime starts");
    (redis, runtime, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_back_off_is_never_reclaimed_from_its_live_owner() {
    let topic = unique("owner");
    let group = unique("owner-group");
    let (broker, a, seen_by_a) = member("owner-a", &topic, &group, true).await;
    broker
        .clone()
        .into_dyn()
        .publish(OutgoingMessage::new(&topic, "stuck"))
        .await
        .expect("publish");
    eventually("A's first attempt", Duration::from_secs(10), || {
        !seen_by_a.lock().unwrap().is_empty()
    })
    .await;
    // B joins while A is in back-off and keeps reading (and reclaiming) the whole time.
    let (_, b, seen_by_b) = member("owner-b", &topic, &group, false).await;

    let dlq = messaging_core::dlq::default_dlq_topic(&topic);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut longest_idle = 0;
    loop {
        assert!(
            seen_by_b.lock().unwrap().is_empty(),
            "B received the entry A is still retrying: {:?}",
            seen_by_b.lock().unwrap()
        );
        for (id, owner, idle, _) in pending_entries(&broker, &topic, &group).await {
            assert!(owner.starts_with("owner-a"), "{id} moved to {owner}");
            longest_idle = longest_idle.max(idle);
        }
        if !broker.browse(&dlq, 10).await.unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no DLQ record on {dlq}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        *seen_by_a.lock().unwrap(),
        ["stuck"; 3],
        "A made every attempt"
    );
    // Refreshed every 500 ms, the entry never idled near the 2 s after which B takes it.
    assert!(longest_idle < 1500, "the entry idled {longest_idle} ms");
    // A acknowledged after the DLQ write: nothing is left for B to reclaim, ever.
    a.shutdown().await.unwrap();
    assert!(
        seen_by_b.lock().unwrap().is_empty(),
        "B received the dead-lettered entry: {:?}",
        seen_by_b.lock().unwrap()
    );

    // B was a working member all along: with A gone, it handles what comes next.
    broker
        .clone()
        .into_dyn()
        .publish(OutgoingMessage::new(&topic, "next"))
        .await
        .expect("publish");
    eventually(
        "B handles the next message",
        Duration::from_secs(10),
        || !seen_by_b.lock().unwrap().is_empty(),
    )
    .await;
    assert_eq!(*seen_by_b.lock().unwrap(), ["next"]);
    b.shutdown().await.unwrap();
}

/// The refresh never takes back what another member took over (the owner was cut off for
/// longer than the reclaim idle time), nor brings back an entry acknowledged meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_neither_steals_back_nor_resurrects() {
    let topic = unique("refresh");
    let group = "g";
    // Reclaim idle 500 ms: the holder refreshes every 125 ms.
    let broker = connect(quick()).await;
    let mut holder = broker
        .clone()
        .into_dyn()
        .subscribe(subscription(group, &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &topic, 2).await;
    let held = collect(&mut *holder, 2, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 2);
    let taken = match &held[0].position {
        messaging_core::Position::StreamId(id) => id.clone(),
        other => panic!("{other:?}"),
    };
    // Another member takes the first entry over; the second is acknowledged.
    let _: redis::Value = redis_cmd(
        &broker,
        redis::cmd("XCLAIM")
            .arg(&topic)
            .arg(group)
            .arg("thief")
            .arg(0)
            .arg(&taken)
            .arg("JUSTID"),
    )
    .await;
    holder.acker().ack(&held[1]).await.unwrap();
    assert_eq!(settle_pending(&broker, &topic, group, 1).await, 1);

    // Until the taken entry has idled 3 × its old owner's refresh period (a refresh of
    // the old owner would have reset it), it stays the thief's and nothing else is pending.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pending = pending_entries(&broker, &topic, group).await;
        let owners: Vec<(&str, &str)> = pending
            .iter()
            .map(|(id, owner, _, _)| (id.as_str(), owner.as_str()))
            .collect();
        assert_eq!(owners, [(taken.as_str(), "thief")], "the pending list");
        if pending[0].2 >= 400 {
            break;
        }
        assert!(Instant::now() < deadline, "the entry kept being claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.close().await.unwrap();
}
