//! The PostgreSQL idempotency store against the local server (127.0.0.1:5432, user postgres,
//! database test): the store conformance bodies of `messaging_core::idempotency::conformance`
//! and its selection by name. Idempotent handlers with their keys here, on every broker, are
//! in the conformance suite (`tests/src/idempotency.rs`). Fails, never skips, without it.

use messaging_core::idempotency::{IdempotencyConfig, connect_store};
use messaging_postgres::PostgresIdempotencyStore;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// One table for every run: the conformance bodies use keys of their own.
async fn store() -> PostgresIdempotencyStore {
    PostgresIdempotencyStore::connect_with_table(URL, "messaging_idempotency_conformance")
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must run at {URL}: {e}"))
}

// What every store owes the runtime (the memory and Redis stores run the same bodies).
messaging_core::idempotency_store_conformance!(store);

#[tokio::test]
async fn the_store_is_selected_by_name() {
    let mut config = IdempotencyConfig::default();
    config.store = "postgres".to_owned();
    config.url = Some(URL.to_owned());
    let store = connect_store(&config).await.expect("the postgres store");
    assert_eq!(store.name(), "postgres");
    // Without a URL, core refuses before the store tries: the variable and an example.
    config.url = None;
    let Err(error) = connect_store(&config).await else {
        panic!("connected without a URL")
    };
    let error = error.to_string();
    assert!(
        error.contains("MESSAGING_IDEMPOTENCY_URL") && error.contains("postgres://"),
        "{error}"
    );
}
