//! A library that reports (issue 23): `RuntimeBuilder::start` on a broker it cannot reach
//! returns an error after `connect_max_retries` attempts, unless it was asked to wait for
//! ever, which keeps the cooldown between rounds. The brokers here are test backends
//! registered by name, selected with `Config::backend`; time is paused, so the delays and
//! cooldowns pass at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use messaging_core::broker::ConnectionState;
use messaging_core::{
    BoxFuture, Broker, BrokerError, BrokerFactory, Config, Error, MemoryBroker, Runtime,
};

static UNREACHABLE_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Never answers.
fn connect_unreachable(_: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    UNREACHABLE_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    Box::pin(async { Err(BrokerError::connection("unreachable", "connection refused")) })
}

inventory::submit! {
    BrokerFactory::new("unreachable", connect_unreachable)
}

static LATE_ATTEMPTS: AtomicU32 = AtomicU32::new(0);
const LATE_FAILURES: u32 = 5;

/// Answers from the sixth attempt on.
fn connect_late(_: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    let attempt = LATE_ATTEMPTS.fetch_add(1, Ordering::SeqCst) + 1;
    Box::pin(async move {
        if attempt <= LATE_FAILURES {
            Err(BrokerError::connection("late", "connection refused"))
        } else {
            Ok(Arc::new(MemoryBroker::new()) as Arc<dyn Broker>)
        }
    })
}

inventory::submit! {
    BrokerFactory::new("late", connect_late)
}

fn config(backend: &str) -> Config {
    Config::default()
        .with_backend(backend)
        .with_connect_retries(2, Duration::from_secs(1), Duration::from_secs(30))
}

#[tokio::test(start_paused = true)]
async fn start_gives_up_after_the_configured_attempts_with_an_error() {
    let state = Arc::new(ConnectionState::default());
    let started = tokio::time::Instant::now();
    let error = Runtime::builder()
        .config(config("unreachable"))
        .without_registered()
        .connection_state(Arc::clone(&state))
        .start()
        .await
        .expect_err("an unreachable broker fails the start");
    assert!(
        matches!(error, Error::Broker(BrokerError::Connection { .. })),
        "{error:?}"
    );
    let text = error.to_string();
    for part in [
        "unreachable",
        "after 2 attempts 1s apart",
        "MESSAGING_CONNECT_MAX_RETRIES",
        "retry_forever",
        "connection refused",
    ] {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    assert_eq!(UNREACHABLE_ATTEMPTS.load(Ordering::SeqCst), 2);
    assert_eq!(state.retry_count(), 2);
    assert!(!state.is_connected());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no cooldown: {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_forever_waits_through_cooldowns_until_the_broker_answers() {
    let state = Arc::new(ConnectionState::default());
    let started = tokio::time::Instant::now();
    let runtime = Runtime::builder()
        .config(config("late"))
        .without_registered()
        .install_global_producer(false)
        .connection_state(Arc::clone(&state))
        .retry_forever(true)
        .start()
        .await
        .expect("connected on the sixth attempt");
    assert_eq!(LATE_ATTEMPTS.load(Ordering::SeqCst), LATE_FAILURES + 1);
    assert_eq!(state.retry_count(), LATE_FAILURES);
    assert!(state.is_connected() && !state.in_cooldown());
    // Rounds of two attempts: fail, 1 s, fail, 30 s cooldown (twice), fail, 1 s, connect.
    assert!(
        started.elapsed() >= Duration::from_secs(63),
        "two cooldowns: {:?}",
        started.elapsed()
    );
    runtime.shutdown().await.unwrap();
}
