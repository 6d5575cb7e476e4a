//! Choosing the backend by configuration (issue 2, done-when 7): `disabled` drops and counts;
//! a name that is not linked fails with the list of linked ones, from code and from the
//! environment.

use std::sync::atomic::{AtomicUsize, Ordering};

use messaging_core::metrics::metrics;
use messaging_core::prelude::*;
use messaging_core::{Error, MemoryBroker, OutgoingMessage, Runtime, linked_backends};

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[message_handler(topic = "backend-test.orders")]
async fn never_called(_body: serde_json::Value) -> anyhow::Result<()> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

// One test: the configuration and the environment are process-wide.
#[tokio::test]
async fn disabled_drops_and_counts_and_unknown_names_list_the_linked_ones() {
    assert_eq!(linked_backends(), vec!["disabled", "memory"]);

    // From the environment, as the emergency switch is thrown.
    let disabled = Config::from_lookup(
        |key| (key == "MESSAGING_BACKEND").then(|| "disabled".to_owned()),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(disabled.backend, "disabled");
    configure_messaging(disabled);
    let dropped = metrics().dropped();
    get_producer()
        .send("backend-test.orders", &serde_json::json!({"id": 1}))
        .await
        .unwrap();
    publish_event(
        "order.created",
        &serde_json::json!({"id": 2}),
        "backend-test.orders",
    )
    .await
    .unwrap();
    assert_eq!(
        metrics().dropped(),
        dropped + 2,
        "both publishes dropped and counted"
    );
    let runtime = Runtime::builder()
        .start()
        .await
        .expect("disabled starts without consuming");
    get_producer()
        .send("backend-test.orders", &serde_json::json!({"id": 3}))
        .await
        .unwrap();
    // Not even what waits on the process's memory broker is consumed.
    MemoryBroker::shared().append(OutgoingMessage::new(
        "backend-test.orders",
        br#"{"id":4}"#.to_vec(),
    ));
    // A group that had subscribed would have taken and acknowledged it by the time the
    // broker is idle (the runtime subscribes before `start` returns); with no group, it is
    // idle at once.
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        MemoryBroker::shared().wait_idle(),
    )
    .await
    .expect("the memory broker idle: a group took the message and never acknowledged it");
    runtime.shutdown().await.unwrap();
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        0,
        "the disabled backend consumed"
    );

    configure_messaging(Config::default().with_backend("kafka"));
    let error = get_producer()
        .send("backend-test.orders", &1)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownBackend { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "unknown messaging backend `kafka`; linked backends: disabled, memory"
    );
    let error = Runtime::builder().start().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("linked backends: disabled, memory"),
        "{error}"
    );

    let from_env = Config::from_lookup(
        |key| (key == "MESSAGING_BACKEND").then(|| "RabbitMQ".to_owned()),
        Vec::new(),
    )
    .unwrap();
    configure_messaging(from_env);
    let error = get_producer()
        .send("backend-test.orders", &1)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown messaging backend `rabbitmq`; linked backends: disabled, memory"
    );
}
