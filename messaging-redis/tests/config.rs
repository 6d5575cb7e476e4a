//! `REDIS_URL` that can never work fails at once as a configuration error, before any
//! connection attempt and without showing the password; an unreachable server stays a
//! retryable error (issue 21).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use messaging_core::broker::connect_once;
use messaging_core::{BrokerError, Config, Error};
use messaging_redis::{RedisBroker, RedisOptions};

/// A port that accepts connections and never answers: a client that tried to talk to it
/// would hang until its timeout, and the test sees the connection.
struct Silent {
    listener: TcpListener,
}

impl Silent {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self { listener }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    fn was_contacted(&self) -> bool {
        self.listener.accept().is_ok()
    }
}

fn malformed(port: u16) -> Vec<String> {
    [
        "not-a-url".to_owned(),
        String::new(),
        format!("http://127.0.0.1:{port}/0"),
        "redis://127.0.0.1:99999/0".to_owned(),
        format!("redis://127.0.0.1:{port}/abc"),
        format!("redis://127.0.0.1:{port}/0?maxlen=notanumber"),
        format!("redis://127.0.0.1:{port}/0?reclaim_idle=soon"),
        format!("redis://127.0.0.1:{port}/0?protocol=resp9"),
        format!("redis://user:s3cret-pw@127.0.0.1:{port}/abc"),
        format!("redis://:s3cret-pw@127.0.0.1:{port}/0?block=never"),
        "redis://user:s3cret-pw@127.0.0.1:99999/0".to_owned(),
        format!("http://:s3cret-pw@127.0.0.1:{port}/0"),
        format!("rediss://127.0.0.1:{port}/0?tls_ca=/nonexistent/ca.pem"),
    ]
    .into()
}

#[tokio::test]
async fn malformed_urls_are_config_errors_found_without_connecting() {
    let silent = Silent::new();
    for url in malformed(silent.port()) {
        let started = Instant::now();
        let error = RedisBroker::connect(&url, RedisOptions::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("`{url}` connected"));
        let elapsed = started.elapsed();
        let BrokerError::Config {
            broker,
            variable,
            message,
        } = &error
        else {
            panic!("`{url}` gave a non-config error: {error}");
        };
        assert_eq!(*broker, "redis");
        assert_eq!(variable, "REDIS_URL", "{error}");
        assert!(!message.is_empty());
        assert!(
            !message.contains("s3cret"),
            "`{url}`: the password shows: {message}"
        );
        assert!(
            elapsed < Duration::from_millis(500),
            "`{url}` took {elapsed:?}"
        );
        assert!(!silent.was_contacted(), "`{url}` tried to connect");
    }
}

#[tokio::test]
async fn the_messages_say_what_is_wrong() {
    let cases = [
        ("not-a-url", "does not parse"),
        ("", "empty"),
        ("http://127.0.0.1:6379/0", "scheme `http`"),
        ("redis://127.0.0.1:99999/0", "invalid port"),
        ("redis://127.0.0.1:6379/abc", "database"),
        (
            "redis://127.0.0.1:6379/0?maxlen=notanumber",
            "maxlen=notanumber",
        ),
    ];
    for (url, expected) in cases {
        let error = RedisBroker::connect_url(url).await.err().unwrap();
        let text = error.to_string();
        assert!(
            text.contains(expected) && text.contains("REDIS_URL"),
            "`{url}`: {text}"
        );
    }
}

#[tokio::test]
async fn the_factory_reports_the_variable_to_fix() {
    let silent = Silent::new();
    for url in malformed(silent.port()) {
        let config = Config::default()
            .with_backend("redis")
            .setting("REDIS_URL", url.clone());
        let started = Instant::now();
        match connect_once(&config).await {
            Err(Error::Config { key, message }) => {
                assert_eq!(key, "REDIS_URL", "`{url}`: {message}");
                assert!(!message.contains("s3cret"), "`{url}`: {message}");
            }
            Err(other) => panic!("`{url}` gave a non-config error: {other}"),
            Ok(_) => panic!("`{url}` connected"),
        }
        assert!(started.elapsed() < Duration::from_millis(500), "`{url}`");
    }
    assert!(!silent.was_contacted());
}

#[tokio::test]
async fn an_unreachable_server_stays_retryable() {
    let started = Instant::now();
    let error = RedisBroker::connect("redis://:s3cret-pw@127.0.0.1:1/0", RedisOptions::default())
        .await
        .expect_err("nothing listens on port 1");
    assert!(!error.is_config(), "{error}");
    assert!(!error.to_string().contains("s3cret"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15));

    let config = Config::default()
        .with_backend("redis")
        .setting("REDIS_URL", "redis://127.0.0.1:1/0");
    match connect_once(&config).await {
        Err(Error::Config { key, message }) => panic!("a config error: {key}: {message}"),
        Err(_) => {}
        Ok(_) => panic!("nothing listens on port 1"),
    }
}
