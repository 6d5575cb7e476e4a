//! The Redis side of request-reply (issue 24): one reply stream per instance, read from its
//! start and trimmed as it is read; replies capped and set to expire, so a requester that
//! stopped reading, or is gone, leaves nothing that grows. Needs Redis on 127.0.0.1:6379.

mod common;

use std::time::Duration;

use common::{connect, redis_cmd, unique};
use messaging_core::broker::{connect_once, factory};
use messaging_core::message::header;
use messaging_core::reply::{ReplyInbox, ReplyKind};
use messaging_core::{Broker, BrokerError, Config, Error, Message, OutgoingMessage};
use messaging_redis::{REPLY_PREFIX, RedisBroker, RedisOptions};

/// How long a condition may take before the test fails.
const LIMIT: Duration = Duration::from_secs(10);

/// A reply as the responder publishes it: to the request's `x-reply-to`, keyed and headed
/// by its correlation id.
fn reply(address: &str, correlation: &str, kind: ReplyKind, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(address, body.to_owned())
        .with_key(correlation)
        .with_header(header::CORRELATION_ID, correlation)
        .with_header(header::REPLY_KIND, kind.as_str())
}

async fn next(inbox: &mut ReplyInbox) -> Message {
    tokio::time::timeout(LIMIT, inbox.replies.recv())
        .await
        .unwrap_or_else(|_| panic!("no reply on {} within {LIMIT:?}", inbox.address))
        .expect("the inbox closed")
}

/// Receives until a reply of kind `end` arrived; returns everything before it.
async fn until_end(inbox: &mut ReplyInbox) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        let message = next(inbox).await;
        if ReplyKind::of(&message) == Some(ReplyKind::End) {
            return got;
        }
        got.push(message);
    }
}

/// Polls `probe` until it returns `Some`, failing after [`LIMIT`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn xlen(broker: &RedisBroker, key: &str) -> usize {
    redis_cmd(broker, redis::cmd("XLEN").arg(key)).await
}

async fn pttl(broker: &RedisBroker, key: &str) -> i64 {
    redis_cmd(broker, redis::cmd("PTTL").arg(key)).await
}

async fn exists(broker: &RedisBroker, key: &str) -> bool {
    redis_cmd::<u32>(broker, redis::cmd("EXISTS").arg(key)).await == 1
}

#[tokio::test]
async fn a_reply_published_right_after_opening_arrives_and_chunks_keep_their_order() {
    let broker = connect(RedisOptions::default()).await;
    let mut inbox = broker.open_replies().await.expect("open_replies");
    assert!(inbox.address.starts_with(REPLY_PREFIX), "{}", inbox.address);
    assert!(inbox.publisher.is_none(), "requests go out with publish");

    // Before the reader's first XREAD, most likely: it reads from the stream's start.
    broker
        .publish_reply(reply(&inbox.address, "i:1", ReplyKind::Ok, r#"{"n":1}"#))
        .await
        .expect("publish_reply");
    let first = next(&mut inbox).await;
    assert_eq!(first.topic.as_str(), inbox.address);
    assert_eq!(first.header(header::CORRELATION_ID), Some("i:1"));
    assert_eq!(ReplyKind::of(&first), Some(ReplyKind::Ok));
    assert_eq!(first.key_str(), Some("i:1"));
    assert_eq!(&first.payload[..], br#"{"n":1}"#);

    for n in 0..100 {
        let chunk = reply(&inbox.address, "i:2", ReplyKind::Chunk, &n.to_string());
        broker.publish_reply(chunk).await.expect("publish_reply");
    }
    let end = reply(&inbox.address, "i:2", ReplyKind::End, "");
    broker.publish_reply(end).await.expect("publish_reply");
    let chunks = until_end(&mut inbox).await;
    let bodies: Vec<String> = chunks
        .iter()
        .map(|m| {
            assert_eq!(m.header(header::CORRELATION_ID), Some("i:2"));
            assert_eq!(ReplyKind::of(m), Some(ReplyKind::Chunk));
            String::from_utf8(m.payload.to_vec()).unwrap()
        })
        .collect();
    let expected: Vec<String> = (0..100).map(|n| n.to_string()).collect();
    assert_eq!(bodies, expected);
}

#[tokio::test]
async fn what_was_read_is_trimmed_and_a_dropped_inbox_leaves_nothing() {
    let broker = connect(RedisOptions::default()).await;
    let mut inbox = broker.open_replies().await.expect("open_replies");
    let address = inbox.address.clone();
    for n in 0..5 {
        let chunk = reply(&address, "t:1", ReplyKind::Chunk, &n.to_string());
        broker.publish_reply(chunk).await.expect("publish_reply");
    }
    broker
        .publish_reply(reply(&address, "t:1", ReplyKind::End, ""))
        .await
        .expect("publish_reply");
    assert_eq!(until_end(&mut inbox).await.len(), 5);
    // An idle instance keeps an empty stream that expires, not its old replies.
    eventually("the stream trimmed to nothing", || async {
        (xlen(&broker, &address).await == 0).then_some(())
    })
    .await;
    assert!(pttl(&broker, &address).await > 0, "the stream has no TTL");

    drop(inbox);
    eventually("the stream of a dropped inbox deleted", || async {
        (!exists(&broker, &address).await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_instances_each_get_exactly_their_own_replies() {
    let (a, b, responder) = (
        connect(RedisOptions::default()).await,
        connect(RedisOptions::default()).await,
        connect(RedisOptions::default()).await,
    );
    let mut inbox_a = a.open_replies().await.expect("open_replies");
    let mut inbox_b = b.open_replies().await.expect("open_replies");
    assert_ne!(inbox_a.address, inbox_b.address);

    for n in 0..20 {
        for (inbox, who) in [(&inbox_a, "a"), (&inbox_b, "b")] {
            let correlation = format!("{who}:{n}");
            let ok = reply(&inbox.address, &correlation, ReplyKind::Ok, who);
            responder.publish_reply(ok).await.expect("publish_reply");
        }
    }
    for inbox in [&inbox_a, &inbox_b] {
        let end = reply(&inbox.address, "end", ReplyKind::End, "");
        responder.publish_reply(end).await.expect("publish_reply");
    }

    for (inbox, who) in [(&mut inbox_a, "a"), (&mut inbox_b, "b")] {
        let got: Vec<String> = until_end(inbox)
            .await
            .iter()
            .map(|m| m.header(header::CORRELATION_ID).unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..20).map(|n| format!("{who}:{n}")).collect();
        assert_eq!(got, expected, "inbox {who}");
    }
}

#[tokio::test]
async fn a_requester_that_does_not_read_leaves_a_capped_stream_that_expires() {
    let cap = 100;
    let ttl = Duration::from_secs(60);
    let broker = connect(RedisOptions {
        reply_maxlen: cap,
        reply_ttl: ttl,
        ..RedisOptions::default()
    })
    .await;
    // A requester that died: nobody reads its address. Replying to it is no error.
    let address = format!("{REPLY_PREFIX}{}", uuid::Uuid::now_v7());
    for n in 0..(3 * cap + 50) {
        let ok = reply(&address, &format!("gone:{n}"), ReplyKind::Ok, "{}");
        broker.publish_reply(ok).await.expect("publish_reply");
    }
    // `MAXLEN ~` trims whole nodes of `stream-node-max-entries` entries.
    let (_, node): (String, usize) = redis_cmd(
        &broker,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("stream-node-max-entries"),
    )
    .await;
    let len = xlen(&broker, &address).await;
    assert!((cap..cap + node.max(1)).contains(&len), "XLEN {len}");
    let left = pttl(&broker, &address).await;
    assert!(
        left > 0 && left <= ttl.as_millis() as i64,
        "PTTL {left} for a TTL of {ttl:?}"
    );

    // Once replies stop, the stream goes by itself.
    let short = connect(RedisOptions {
        reply_ttl: Duration::from_millis(200),
        ..RedisOptions::default()
    })
    .await;
    let address = format!("{REPLY_PREFIX}{}", uuid::Uuid::now_v7());
    short
        .publish_reply(reply(&address, "gone", ReplyKind::Ok, "{}"))
        .await
        .expect("publish_reply");
    assert!(exists(&short, &address).await);
    eventually("the unread stream expired", || async {
        (!exists(&short, &address).await).then_some(())
    })
    .await;

    // A stream this crate did not name is capped but not made to expire.
    let foreign = unique("foreign-replies");
    broker
        .publish_reply(reply(&foreign, "f", ReplyKind::Ok, "{}"))
        .await
        .expect("publish_reply");
    assert_eq!(xlen(&broker, &foreign).await, 1);
    assert_eq!(pttl(&broker, &foreign).await, -1);
    redis_cmd::<u32>(&broker, redis::cmd("DEL").arg(&foreign)).await;
}

/// `id` of the client connection named `name` in `CLIENT LIST`.
async fn client_id(broker: &RedisBroker, name: &str) -> Option<u64> {
    let list: String = redis_cmd(broker, redis::cmd("CLIENT").arg("LIST")).await;
    list.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let id = fields.next()?.strip_prefix("id=")?.parse().ok()?;
        fields
            .any(|field| field.strip_prefix("name=") == Some(name))
            .then_some(id)
    })
}

#[tokio::test]
async fn a_reader_whose_connection_drops_reconnects_and_keeps_its_address() {
    let broker = connect(RedisOptions::default()).await;
    let mut inbox = broker.open_replies().await.expect("open_replies");
    let address = inbox.address.clone();
    let before = eventually("the reader's connection", || client_id(&broker, &address)).await;
    let killed: u32 = redis_cmd(
        &broker,
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(before)
            .arg("SKIPME")
            .arg("yes"),
    )
    .await;
    assert_eq!(killed, 1);

    // Published while the reader may still be reconnecting: it waits in the stream.
    broker
        .publish_reply(reply(&address, "k:1", ReplyKind::Ok, "after"))
        .await
        .expect("publish_reply");
    let got = next(&mut inbox).await;
    assert_eq!(got.header(header::CORRELATION_ID), Some("k:1"));
    let after = eventually("the reader's new connection", || {
        client_id(&broker, &address)
    })
    .await;
    assert_ne!(before, after);
}

#[tokio::test]
async fn bad_reply_settings_are_config_errors_naming_the_variable() {
    // Nothing listens on port 1: a setting checked only when connecting would give a
    // connection error instead.
    let base = || {
        Config::default()
            .with_backend("redis")
            .setting("REDIS_URL", "redis://127.0.0.1:1/0")
    };
    let cases = [
        ("REDIS_REPLY_MAXLEN", "lots"),
        ("REDIS_REPLY_MAXLEN", "-5"),
        ("REDIS_REPLY_MAXLEN", "1.5"),
        ("REDIS_REPLY_MAXLEN", "0"),
        ("REDIS_REPLY_TTL", "soon"),
        ("REDIS_REPLY_TTL", "-1s"),
        ("REDIS_REPLY_TTL", "0"),
        ("REDIS_REPLY_TTL", "0s"),
    ];
    for (variable, value) in cases {
        let config = base().setting(variable, value);
        match connect_once(&config).await {
            Err(Error::Config { key, message }) => {
                assert_eq!(key, variable, "{variable}={value}: {message}");
                assert!(
                    message.contains(value) || value.starts_with('0'),
                    "{variable}={value}: {message}"
                );
            }
            Err(other) => panic!("{variable}={value} gave a non-config error: {other}"),
            Ok(_) => panic!("{variable}={value} connected"),
        }
        match factory("redis").unwrap().check_settings(&config) {
            Err(BrokerError::Config { variable: v, .. }) => assert_eq!(v, variable),
            other => panic!("{variable}={value}: check gave {other:?}"),
        }
    }

    // Blank takes the default, as an empty `MESSAGING_*` variable does.
    let blank = base()
        .setting("REDIS_REPLY_MAXLEN", " ")
        .setting("REDIS_REPLY_TTL", "");
    factory("redis").unwrap().check_settings(&blank).unwrap();
    let good = base()
        .setting("REDIS_REPLY_MAXLEN", "500")
        .setting("REDIS_REPLY_TTL", "90s");
    factory("redis").unwrap().check_settings(&good).unwrap();

    // The settings reach the broker the factory connects.
    let config = Config::default()
        .with_backend("redis")
        .setting("REDIS_URL", common::URL)
        .setting("REDIS_REPLY_MAXLEN", "100")
        .setting("REDIS_REPLY_TTL", "45s");
    let configured = connect_once(&config).await.expect("connect");
    let address = format!("{REPLY_PREFIX}{}", uuid::Uuid::now_v7());
    for n in 0..300 {
        let ok = reply(&address, &n.to_string(), ReplyKind::Ok, "{}");
        configured.publish_reply(ok).await.expect("publish_reply");
    }
    let check = connect(RedisOptions::default()).await;
    let left = pttl(&check, &address).await;
    assert!(left > 0 && left <= 45_000, "PTTL {left}");
    assert!(xlen(&check, &address).await < 300);
    redis_cmd::<u32>(&check, redis::cmd("DEL").arg(&address)).await;

    // The same values set in code.
    for options in [
        RedisOptions {
            reply_maxlen: 0,
            ..RedisOptions::default()
        },
        RedisOptions {
            reply_ttl: Duration::ZERO,
            ..RedisOptions::default()
        },
    ] {
        let error = RedisBroker::connect("redis://127.0.0.1:1/0", options)
            .await
            .expect_err("a zero cap or TTL");
        assert!(error.is_config(), "{error}");
        assert!(error.to_string().contains("REDIS_REPLY_"), "{error}");
    }
}
