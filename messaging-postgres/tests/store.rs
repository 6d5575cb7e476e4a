//! The PostgreSQL idempotency store against the local server (127.0.0.1:5432, user postgres,
//! database test); fails, never skips, without it.

use std::time::Duration;

use messaging_core::idempotency::{Begin, IdempotencyConfig, IdempotencyStore, connect_store};
use messaging_postgres::PostgresIdempotencyStore;
use tokio::time::Instant;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const LEASE: Duration = Duration::from_secs(30);

async fn store() -> PostgresIdempotencyStore {
    let table = format!("idem_test_{}", uuid::Uuid::now_v7().simple());
    PostgresIdempotencyStore::connect_with_table(URL, &table)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must run at {URL}: {e}"))
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

/// Many takers of one key at once: exactly one begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_takers_at_once_one_begins() {
    let store = std::sync::Arc::new(store().await);
    let takers: Vec<_> = (0..16)
        .map(|i| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .try_begin("contested", &format!("o{i}"), LEASE)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut begun = 0;
    for taker in takers {
        if taker.await.unwrap() == Begin::Begun {
            begun += 1;
        }
    }
    assert_eq!(begun, 1);
}

#[tokio::test]
async fn the_store_is_selected_by_name() {
    let mut config = IdempotencyConfig::default();
    config.store = "postgres".to_owned();
    config.url = Some(URL.to_owned());
    let store = connect_store(&config).await.expect("the postgres store");
    assert_eq!(store.name(), "postgres");
}

/// An idempotent handler with its keys in PostgreSQL (on the memory broker): one key
/// delivered twice at once on two lanes runs once, never twice at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_handler_with_the_keys_in_postgres_runs_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use messaging_core::message::header;
    use messaging_core::metrics::metrics;
    use messaging_core::testing::TestHarness;
    use messaging_core::{HandlerSpec, Invocation, OutgoingMessage};

    const TOPIC: &str = "pg-idem.orders";
    let runs = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (runs, running, most) = (runs.clone(), running.clone(), most.clone());
        HandlerSpec::new("charge", [TOPIC], move |_inv: Invocation| {
            let (runs, running, most) = (runs.clone(), running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .idempotent(true)
    };
    let store: Arc<dyn IdempotencyStore> = Arc::new(store().await);
    let harness = TestHarness::builder()
        .runtime(|r| {
            r.without_registered()
                .handler(handler)
                .concurrency(4)
                .idempotency_store(store)
        })
        .start()
        .await
        .unwrap();
    for key in ["a", "b"] {
        let mut message = OutgoingMessage::new(TOPIC, b"{}".to_vec())
            .with_header(header::IDEMPOTENCY_KEY, "order-7");
        message.key = Some(key.to_owned().into());
        harness.send_raw(message).await.unwrap();
    }
    harness.wait_idle().await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(most.load(Ordering::SeqCst), 1);
    assert_eq!(metrics().duplicates(TOPIC, "charge"), 1);
    harness.shutdown().await;
}
