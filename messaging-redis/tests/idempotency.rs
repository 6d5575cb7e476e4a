//! The Redis idempotency store against a real Redis (127.0.0.1:6379), and idempotent handlers
//! on the Redis broker with it (issue 24, done-when 4): the same key delivered twice, to two
//! members of a group at once, runs the handler once and counts a duplicate.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use messaging_core::idempotency::{Begin, IdempotencyConfig, IdempotencyStore, connect_store};
use messaging_core::message::header;
use messaging_core::metrics::metrics;
use messaging_core::{Broker, HandlerSpec, Invocation, OutgoingMessage, Runtime};
use messaging_redis::{RedisIdempotencyStore, RedisOptions};
use tokio::time::Instant;

const LEASE: Duration = Duration::from_secs(30);

async fn store() -> RedisIdempotencyStore {
    RedisIdempotencyStore::connect(URL)
        .await
        .expect("Redis on 127.0.0.1:6379")
        .with_prefix(format!("{}:", unique("idem-test")))
}

async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_done_key_is_a_duplicate_until_its_ttl_runs_out() {
    let store = store().await;
    assert_eq!(
        store.try_begin("k", "a", LEASE).await.unwrap(),
        Begin::Begun
    );
    store
        .complete("k", "a", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(store.try_begin("k", "b", LEASE).await.unwrap(), Begin::Done);
    // Redis expires it: the key begins again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.try_begin("k", "b", LEASE).await.unwrap() {
            Begin::Begun => break,
            Begin::Done => assert!(Instant::now() < deadline, "the TTL never ran out"),
            Begin::InProgress => panic!("a done key reported in progress"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_key_in_progress_is_held_and_only_its_owner_releases_it() {
    let store = store().await;
    assert_eq!(
        store.try_begin("k", "a", LEASE).await.unwrap(),
        Begin::Begun
    );
    assert_eq!(
        store.try_begin("k", "b", LEASE).await.unwrap(),
        Begin::InProgress
    );
    // Not `b`'s to free.
    store.release("k", "b").await.unwrap();
    assert_eq!(
        store.try_begin("k", "b", LEASE).await.unwrap(),
        Begin::InProgress
    );
    store.release("k", "a").await.unwrap();
    assert_eq!(
        store.try_begin("k", "b", LEASE).await.unwrap(),
        Begin::Begun
    );
    // A release after completion leaves the key done.
    store.complete("k", "b", LEASE).await.unwrap();
    store.release("k", "b").await.unwrap();
    assert_eq!(store.try_begin("k", "c", LEASE).await.unwrap(), Begin::Done);
}

#[tokio::test]
async fn a_crashed_holders_lease_runs_out() {
    let store = store().await;
    let short = Duration::from_millis(200);
    assert_eq!(
        store.try_begin("k", "a", short).await.unwrap(),
        Begin::Begun
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.try_begin("k", "b", LEASE).await.unwrap() != Begin::Begun {
        assert!(Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_store_is_selected_by_name() {
    let mut config = IdempotencyConfig::default();
    config.store = "redis".to_owned();
    config.url = Some(URL.to_owned());
    let store = connect_store(&config).await.expect("the redis store");
    assert_eq!(store.name(), "redis");
    config.url = None;
    let Err(error) = connect_store(&config).await else {
        panic!("connected without a URL or with an unknown store")
    };
    let error = error.to_string();
    assert!(error.contains("MESSAGING_IDEMPOTENCY_URL"), "{error}");
    config.store = "nope".to_owned();
    let Err(error) = connect_store(&config).await else {
        panic!("connected without a URL or with an unknown store")
    };
    let error = error.to_string();
    assert!(
        error.contains("memory") && error.contains("redis"),
        "{error}"
    );
}

/// Two members of one group on the Redis broker, the keys in Redis: the same idempotency key
/// published twice (different message keys, so both members may take one at once) runs the
/// handler once, never twice at the same time, and the duplicate is acknowledged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_delivered_twice_to_a_group_runs_once() {
    let topic = unique("idem-broker");
    let group = unique("idem-group");
    let runs = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let store: Arc<dyn IdempotencyStore> = Arc::new(store().await);
    let mut members = Vec::new();
    for _ in 0..2 {
        let (runs, running, most) = (Arc::clone(&runs), Arc::clone(&running), Arc::clone(&most));
        let handler = HandlerSpec::new("charge", [topic.as_str()], move |_inv: Invocation| {
            let (runs, running, most) =
                (Arc::clone(&runs), Arc::clone(&running), Arc::clone(&most));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .group(group.as_str())
        .idempotent(true);
        let broker = connect(RedisOptions::default()).await.into_dyn();
        members.push(
            Runtime::builder()
                .broker(broker)
                .without_registered()
                .install_global_producer(false)
                .concurrency(4)
                .idempotency_store(Arc::clone(&store))
                .handler(handler)
                .start()
                .await
                .expect("runtime starts"),
        );
    }
    let publisher = connect(RedisOptions::default()).await;
    for key in ["a", "b"] {
        publisher
            .publish(
                OutgoingMessage::new(&topic, &b"{\"order_id\":7}"[..])
                    .with_key(key)
                    .with_header(header::IDEMPOTENCY_KEY, "order-7"),
            )
            .await
            .unwrap();
    }
    eventually("a run and a duplicate", Duration::from_secs(30), || {
        runs.load(Ordering::SeqCst) == 1 && metrics().duplicates(&topic, &group) == 1
    })
    .await;
    // Both acknowledged: nothing pending in the group.
    assert_eq!(settle_pending(&publisher, &topic, &group, 0).await, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(most.load(Ordering::SeqCst), 1);
    for member in members {
        member.shutdown().await.unwrap();
    }
}

/// Done-when 4, a member killed between its handler's success and the acknowledgement: the
/// state it leaves is its entry pending in the group and the key done in the store. Another
/// member reclaims the entry; it is a duplicate, acknowledged without running the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_crash_between_success_and_ack_does_not_run_again() {
    use messaging_core::broker::StartFrom;

    let topic = unique("idem-crash");
    let group = unique("idem-crash-group");
    let store: Arc<dyn IdempotencyStore> = Arc::new(store().await);
    let doomed = connect(RedisOptions {
        release_on_drop: false,
        consumer_prefix: "doomed".into(),
        ..quick()
    })
    .await;
    let mut consumer = doomed
        .subscribe(subscription(&group, &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    doomed
        .publish(
            OutgoingMessage::new(&topic, &b"{}"[..])
                .with_key("7")
                .with_header(header::IDEMPOTENCY_KEY, "order-7"),
        )
        .await
        .unwrap();
    let got = collect(&mut *consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    // What the dispatcher did before the kill: took the key, ran the handler, marked it done.
    let key = messaging_core::idempotency::scoped(&group, "order-7");
    assert_eq!(
        store.try_begin(&key, "doomed", LEASE).await.unwrap(),
        Begin::Begun
    );
    store
        .complete(&key, "doomed", Duration::from_secs(60))
        .await
        .unwrap();
    // Killed: never acknowledged, never handed back.
    drop(consumer);
    drop(doomed);
    let observer = connect(RedisOptions::default()).await;
    assert_eq!(pending(&observer, &topic, &group).await, 1);

    let runs = Arc::new(AtomicUsize::new(0));
    let handler = {
        let runs = Arc::clone(&runs);
        HandlerSpec::new("charge", [topic.as_str()], move |_inv: Invocation| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .group(group.as_str())
        .idempotent(true)
    };
    let survivor = Runtime::builder()
        .broker(connect(quick()).await.into_dyn())
        .without_registered()
        .install_global_producer(false)
        .idempotency_store(Arc::clone(&store))
        .handler(handler)
        .start()
        .await
        .expect("runtime starts");
    eventually("the reclaimed duplicate", Duration::from_secs(30), || {
        metrics().duplicates(&topic, &group) == 1
    })
    .await;
    assert_eq!(settle_pending(&observer, &topic, &group, 0).await, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler ran again");
    survivor.shutdown().await.unwrap();
}
