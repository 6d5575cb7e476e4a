//! Fail fast on a `RABBITMQ_URL` that can never work, stay retryable when the broker is
//! merely unreachable (issue 21). The refusals (missing virtual host, wrong password) need
//! RabbitMQ on 127.0.0.1:5672.

use std::time::Duration;

use messaging_core::{BrokerError, Config, Error};
use messaging_rabbit::RabbitBroker;

/// Connects to `url`, which must fail within 2 s.
async fn connect_error(url: &str) -> BrokerError {
    match tokio::time::timeout(Duration::from_secs(2), RabbitBroker::connect_url(url)).await {
        Ok(Ok(_)) => panic!("{url} connected"),
        Ok(Err(error)) => error,
        Err(_) => panic!("connecting to {url} did not fail within 2 s"),
    }
}

/// Asserts a configuration error naming `RABBITMQ_URL` whose message contains `says`, and
/// never the password `secret`.
fn assert_config(error: &BrokerError, says: &str) {
    match error {
        BrokerError::Config {
            broker,
            variable,
            message,
        } => {
            assert_eq!(*broker, "rabbitmq");
            assert_eq!(variable, "RABBITMQ_URL");
            assert!(message.contains(says), "`{says}` not in: {message}");
            assert!(!message.contains("secret"), "the password leaks: {message}");
        }
        other => panic!("not a configuration error: {other}"),
    }
}

#[tokio::test]
async fn a_url_that_does_not_parse_is_a_configuration_error() {
    assert_config(&connect_error("not a url").await, "is not a URL");
    assert_config(
        &connect_error("amqp://guest:secret@127.0.0.1:99999/%2f").await,
        "does not parse",
    );
    assert_config(
        &connect_error("amqp://guest:secret@127.0.0.1:5672/%2f?heartbeat=often").await,
        "does not parse",
    );
}

#[tokio::test]
async fn another_scheme_is_a_configuration_error() {
    assert_config(
        &connect_error("http://guest:secret@127.0.0.1:5672/%2f").await,
        "scheme `http`",
    );
    assert_config(
        &connect_error("amqps://guest:secret@127.0.0.1:5671/%2f").await,
        "TLS",
    );
}

#[tokio::test]
async fn a_url_without_a_host_is_a_configuration_error() {
    for url in [
        "amqp://guest:secret@:5672/%2f",
        "amqp:///%2f",
        "amqp://guest:secret@/%2f",
    ] {
        assert_config(&connect_error(url).await, "names no host");
    }
}

#[tokio::test]
async fn a_missing_virtual_host_is_a_configuration_error() {
    let error = connect_error("amqp://guest:guest@127.0.0.1:5672/nope").await;
    assert_config(&error, "virtual host `nope`");
}

#[tokio::test]
async fn refused_credentials_are_a_configuration_error() {
    let error = connect_error("amqp://guest:wrong-secret@127.0.0.1:5672/%2f").await;
    assert_config(&error, "credentials of user `guest`");
}

#[tokio::test]
async fn an_unreachable_broker_stays_retryable() {
    let error = connect_error("amqp://guest:secret@127.0.0.1:1/%2f").await;
    assert!(matches!(error, BrokerError::Connection { .. }), "{error}");
    assert!(!error.is_config());
}

/// Through the registered factory, as `consumer` connects: the core's configuration error
/// names the variable.
#[tokio::test]
async fn the_factory_reports_the_variable() {
    let config = Config::default()
        .with_backend("rabbitmq")
        .setting("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/nope");
    let connecting = messaging_core::broker::connect_once(&config);
    let error = match tokio::time::timeout(Duration::from_secs(2), connecting).await {
        Ok(Ok(_)) => panic!("connected to a missing virtual host"),
        Ok(Err(error)) => error,
        Err(_) => panic!("did not fail within 2 s"),
    };
    match error {
        Error::Config { key, message } => {
            assert_eq!(key, "RABBITMQ_URL");
            assert!(message.contains("nope"), "{message}");
        }
        other => panic!("not a configuration error: {other}"),
    }
}
