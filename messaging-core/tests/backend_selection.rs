//! Choosing the backend by configuration (issue 2, done-when 7): `disabled` drops and counts;
//! a name that is not linked fails with the list of linked ones, from code and from the
//! environment.

use messaging_core::metrics::metrics;
use messaging_core::prelude::*;
use messaging_core::{Error, Runtime, linked_backends};

#[message_handler(topic = "backend-test.orders")]
async fn never_called(_body: serde_json::Value) -> anyhow::Result<()> {
    panic!("the disabled backend delivers nothing")
}

// One test: the configuration and the environment are process-wide.
#[tokio::test]
async fn disabled_drops_and_counts_and_unknown_names_list_the_linked_ones() {
    assert_eq!(linked_backends(), vec!["disabled", "memory"]);

    configure_messaging(Config {
        backend: "disabled".into(),
        ..Config::default()
    });
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
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    runtime.shutdown().await.unwrap();

    configure_messaging(Config {
        backend: "kafka".into(),
        ..Config::default()
    });
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
