//! Marking the idempotency key done in the handler's own transaction (issue 24), against the
//! local PostgreSQL (127.0.0.1:5432, user postgres, database test); fails, never skips,
//! without it.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::idempotency::{Begin, Claim, IdempotencyStore};
use messaging_core::message::header;
use messaging_core::metrics::metrics;
use messaging_core::testing::TestHarness;
use messaging_core::{
    FromContext as _, HandlerError, HandlerSpec, Invocation, OutgoingMessage, RetryPolicy,
};
use messaging_postgres::{IdempotencyKey, MarkError, PostgresIdempotencyStore};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);

fn unique(name: &str) -> String {
    format!("{name}_{}", uuid::Uuid::now_v7().simple())
}

async fn client() -> Client {
    let (client, connection) = tokio_postgres::connect(URL, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must run at {URL}: {e}"));
    tokio::spawn(connection);
    client
}

async fn store() -> Arc<PostgresIdempotencyStore> {
    let store = PostgresIdempotencyStore::connect_with_table(URL, &unique("idem_tx"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must run at {URL}: {e}"));
    Arc::new(store)
}

/// The key's `done_until` as text, `None` while it is not done (or absent), read on a
/// connection of its own: what other members see.
async fn done_until(observer: &Client, table: &str, key: &str) -> Option<String> {
    observer
        .query_opt(
            &format!("SELECT done_until::text FROM {table} WHERE key = $1"),
            &[&key],
        )
        .await
        .unwrap()
        .and_then(|row| row.get(0))
}

/// What each attempt saw after its transaction: (order, attempt, its key's `done_until`).
type Seen = Arc<std::sync::Mutex<Vec<(String, u32, Option<String>)>>>;

/// The database of the handler and the observer's connection.
struct Db {
    client: Mutex<Client>,
    observer: Client,
    payments: String,
    keys: String,
}

/// A payment handler writing to `payments` and marking its key done in the same
/// transaction. `order-1`: its first attempt rolls back and fails; its second commits and
/// then fails, so that the framework never marks the key done itself. `order-2` commits and
/// succeeds. Each attempt records what the observer saw of its key after the transaction.
fn pay(topic: &str, db: Arc<Db>, seen: Seen) -> HandlerSpec {
    HandlerSpec::new("pay", [topic], move |inv: Invocation| {
        let (db, seen) = (Arc::clone(&db), Arc::clone(&seen));
        // Resolved as the macros resolve an argument: while the attempt holds its key.
        let key = IdempotencyKey::from_context(&inv);
        async move {
            let key = key?;
            let order = String::from_utf8_lossy(&inv.message.payload).into_owned();
            let mut client = db.client.lock().await;
            let tx = client.transaction().await?;
            tx.execute(
                &format!("INSERT INTO {} (order_id) VALUES ($1)", db.payments),
                &[&order],
            )
            .await?;
            key.mark_done(&tx).await?;
            let store_key = key.key().expect("the message has a key").to_owned();
            let rolled_back = order == "order-1" && inv.attempt == 1;
            if rolled_back {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            let after = done_until(&db.observer, &db.keys, &store_key).await;
            seen.lock()
                .unwrap()
                .push((order.clone(), inv.attempt, after));
            match (order.as_str(), inv.attempt) {
                ("order-1", 1) => Err(HandlerError::retryable("card declined")),
                ("order-1", _) => Err(HandlerError::retryable("the receipt could not be sent")),
                _ => Ok(()),
            }
        }
    })
    .retry(RetryPolicy::new(3, Duration::from_millis(10)))
    .idempotent(true)
}

fn keyed(topic: &str, idempotency_key: &str) -> OutgoingMessage {
    OutgoingMessage::new(topic, idempotency_key.as_bytes().to_vec())
        .with_header(header::IDEMPOTENCY_KEY, idempotency_key)
}

/// A rollback leaves the key held by the attempt (not done), and the retry runs; a commit
/// marks it done at that moment, even when the attempt then fails and the framework never
/// marks it (the retry and a redelivery are duplicates); after a commit, the framework's
/// own marking of a successful attempt changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_done_exactly_when_the_handlers_transaction_commits() {
    let topic = unique("pg-tx.orders");
    let store = store().await;
    let payments = unique("payments");
    let setup = client().await;
    setup
        .batch_execute(&format!("CREATE TABLE {payments} (order_id text NOT NULL)"))
        .await
        .unwrap();
    let db = Arc::new(Db {
        client: Mutex::new(client().await),
        observer: client().await,
        payments: payments.clone(),
        keys: store.table().to_owned(),
    });
    let seen = Seen::default();
    let handler = pay(&topic, Arc::clone(&db), Arc::clone(&seen));
    let dyn_store: Arc<dyn IdempotencyStore> = store.clone();
    let harness = TestHarness::builder()
        .runtime(|r| {
            r.without_registered()
                .handler(handler)
                .idempotency_store(dyn_store)
        })
        .start()
        .await
        .unwrap();
    for key in ["order-1", "order-2"] {
        harness.send_raw(keyed(&topic, key)).await.unwrap();
    }
    harness.wait_idle().await;

    let seen: Vec<(String, u32, Option<String>)> = seen.lock().unwrap().clone();
    let of = |order: &str| -> Vec<(u32, bool)> {
        seen.iter()
            .filter(|(o, _, _)| o == order)
            .map(|(_, attempt, done)| (*attempt, done.is_some()))
            .collect()
    };
    assert_eq!(
        of("order-1"),
        [(1, false), (2, true)],
        "rolled back: not done, the retry ran; committed: done"
    );
    assert_eq!(of("order-2"), [(1, true)]);
    // The third attempt of order-1 found its key done: a duplicate, not a run.
    assert_eq!(metrics().duplicates(&topic, "pay"), 1);
    assert!(harness.dlq(&topic).is_empty());
    let rows: Vec<String> = setup
        .query(
            &format!("SELECT order_id FROM {payments} ORDER BY order_id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["order-1", "order-2"], "one payment each");
    // The framework's marking after the handler's commit left the row as the commit did.
    let committed = seen
        .iter()
        .find(|(o, _, _)| o == "order-2")
        .and_then(|(_, _, done)| done.clone());
    let key = messaging_core::idempotency::scoped("pay", "order-2");
    assert_eq!(done_until(&setup, store.table(), &key).await, committed);

    // A redelivery of either is a duplicate.
    harness.send_raw(keyed(&topic, "order-1")).await.unwrap();
    harness.wait_idle().await;
    assert_eq!(metrics().duplicates(&topic, "pay"), 2);
    assert_eq!(seen_len(&db, &payments).await, 2);
    harness.shutdown().await;
    setup
        .batch_execute(&format!(
            "DROP TABLE {payments}; DROP TABLE {}",
            store.table()
        ))
        .await
        .unwrap();
}

async fn seen_len(db: &Db, payments: &str) -> i64 {
    db.observer
        .query_one(&format!("SELECT count(*) FROM {payments}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// An attempt that lost its key (its lease ran out and another delivery took it) cannot mark
/// it done: the handler is told to roll back.
#[tokio::test]
async fn an_attempt_that_lost_its_key_cannot_mark_it() {
    let store = store().await;
    let dyn_store: Arc<dyn IdempotencyStore> = store.clone();
    assert_eq!(
        store
            .try_begin("k", "a", Duration::from_millis(100))
            .await
            .unwrap(),
        Begin::Begun
    );
    let stale =
        IdempotencyKey::from_claim(Claim::new("k", "a", TTL, Arc::clone(&dyn_store))).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.try_begin("k", "b", LEASE).await.unwrap() != Begin::Begun {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut db = client().await;
    let tx = db.transaction().await.unwrap();
    let error = stale.mark_done(&tx).await.unwrap_err();
    assert!(matches!(error, MarkError::NotHeld { .. }), "{error}");
    drop(tx);
    // `b`'s claim marks it.
    let current = IdempotencyKey::from_claim(Claim::new("k", "b", TTL, dyn_store)).unwrap();
    let tx = db.transaction().await.unwrap();
    current.mark_done(&tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.try_begin("k", "c", LEASE).await.unwrap(), Begin::Done);
    db.batch_execute(&format!("DROP TABLE {}", store.table()))
        .await
        .unwrap();
}

/// A claim of another store cannot make an `IdempotencyKey`: the error names the variable.
#[tokio::test]
async fn a_key_kept_elsewhere_is_refused() {
    let memory: Arc<dyn IdempotencyStore> =
        Arc::new(messaging_core::idempotency::MemoryIdempotencyStore::new(10));
    let error = IdempotencyKey::from_claim(Claim::new("k", "a", TTL, memory)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("MESSAGING_IDEMPOTENCY_STORE=postgres"),
        "{error}"
    );
}
