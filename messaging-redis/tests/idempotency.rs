//! The Redis idempotency store against a real Redis (127.0.0.1:6379): the store conformance
//! bodies of `messaging_core::idempotency::conformance`, its selection by name, and a
//! member's crash between success and acknowledgement simulated at the stream level (issue
//! 24, done-when 4). Idempotent handlers on every broker with this store are in the
//! conformance suite (`tests/src/idempotency.rs`), the crash as processes in
//! `tests/tests/crash_after_success.rs`.

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

// What every store owes the runtime (the memory and PostgreSQL stores run the same bodies).
messaging_core::idempotency_store_conformance!(store);

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
