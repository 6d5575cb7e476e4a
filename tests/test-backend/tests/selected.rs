//! A broker crate core knows nothing about is selected by `MESSAGING_BACKEND` and configured
//! by its own variables, through the registration the real brokers use: a handler receives
//! what is published, the connection loop names the masked URL, and a bad variable fails at
//! once naming it.
//!
//! Run with: cargo test -p messaging-test-backend

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use messaging_core::broker::factory;
use messaging_core::{Config, Error, HandlerSpec, Runtime, linked_backends};
use messaging_test_backend::NAME;

/// The configuration this environment gives, as `Config::from_env` reads it.
fn from_env(vars: &[(&str, &str)]) -> Result<Config, Error> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| vars.get(k).cloned(), vars.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_backend_selects_a_broker_core_does_not_know() {
    assert!(linked_backends().contains(&NAME), "{:?}", linked_backends());
    let config = from_env(&[
        ("MESSAGING_BACKEND", "Loopback"),
        ("LOOPBACK_URL", "loop://ops:s3cret@orders"),
    ])
    .unwrap();
    assert_eq!(config.backend, "loopback");
    // Captured for the broker by the prefix it registered; masked in logs.
    assert_eq!(
        config.settings.get("LOOPBACK_URL"),
        Some("loop://ops:s3cret@orders")
    );
    assert!(!format!("{config:?}").contains("s3cret"));
    assert_eq!(
        factory(NAME).unwrap().describe(&config),
        "loop://ops:***@orders"
    );

    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let handler = HandlerSpec::new("count", ["loopback.orders"], move |inv| {
        let counter = Arc::clone(&counter);
        async move {
            assert_eq!(&inv.message.payload[..], br#"{"id":1}"#);
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let runtime = Runtime::builder()
        .config(config.clone())
        .without_registered()
        .install_global_producer(false)
        .handler(handler)
        .start()
        .await
        .expect("the runtime connects through the registered factory");
    assert_eq!(runtime.broker().name(), NAME);
    runtime
        .producer()
        .send("loopback.orders", &serde_json::json!({"id": 1}))
        .await
        .expect("published");
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the handler never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime.shutdown().await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn its_own_variables_fail_at_once_naming_them() {
    for url in ["", "  ", "http://orders", "loop://ops:s3cret@"] {
        let config = from_env(&[("MESSAGING_BACKEND", "loopback"), ("LOOPBACK_URL", url)])
            .expect("core does not read LOOPBACK_URL");
        let error = Runtime::builder()
            .config(config)
            .without_registered()
            .install_global_producer(false)
            .retry_forever(true)
            .start()
            .await
            .expect_err("refused");
        match &error {
            Error::Config { key, .. } => assert_eq!(key, "LOOPBACK_URL", "{url:?}: {error}"),
            other => panic!("{url:?}: not a configuration error: {other:?}"),
        }
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}
