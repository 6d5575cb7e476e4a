//! A topic key of another type (`SET orders.created x`) fails only what uses it, with a
//! retryable error naming the key, and never ends or panics a consumer (issue 21).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use messaging_core::broker::StartFrom;
use messaging_core::{Broker, HandlerSpec, Invocation, OutgoingMessage, Runtime};
use messaging_redis::RedisOptions;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn subscribing_to_a_string_key_is_a_retryable_error_naming_it() {
    let broker = connect(RedisOptions::default()).await;
    let (good, bad) = (unique("good"), unique("bad"));
    let _: () = redis_cmd(&broker, redis::cmd("SET").arg(&bad).arg("x")).await;

    let error = match broker
        .subscribe(subscription("g", &[&bad], StartFrom::Latest))
        .await
    {
        Ok(_) => panic!("subscribed to a string key"),
        Err(error) => error,
    };
    assert!(!error.is_config(), "{error}");
    let text = error.to_string();
    assert!(text.contains(&bad) && text.contains("string"), "{text}");

    // A group over both topics fails as a whole; one over the good topic alone works.
    assert!(
        broker
            .subscribe(subscription("g", &[&good, &bad], StartFrom::Latest))
            .await
            .is_err()
    );
    let mut consumer = broker
        .subscribe(subscription("g2", &[&good], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &good, 1).await;
    assert_eq!(collect(&mut *consumer, 1, WAIT).await.len(), 1);

    // Once the key is fixed, the same subscription works.
    let _: () = redis_cmd(&broker, redis::cmd("DEL").arg(&bad)).await;
    broker
        .subscribe(subscription("g", &[&bad], StartFrom::Latest))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stream_turned_into_a_string_fails_fetches_until_fixed() {
    let broker = connect(quick()).await;
    let topic = unique("turned");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &topic, 1).await;
    let got = collect(&mut *consumer, 1, WAIT).await;
    assert_eq!(got.len(), 1);
    consumer.acker().ack(&got[0]).await.unwrap();

    let _: () = redis_cmd(&broker, redis::cmd("DEL").arg(&topic)).await;
    let _: () = redis_cmd(&broker, redis::cmd("SET").arg(&topic).arg("x")).await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no error naming the key");
        match tokio::time::timeout(WAIT, consumer.next_batch(10)).await {
            Ok(Err(error)) if error.to_string().contains("not a stream") => {
                assert!(!error.is_config(), "{error}");
                assert!(error.to_string().contains(&topic), "{error}");
                break;
            }
            // Other errors first (a read unblocked by the deletion) are fine.
            Ok(Err(_)) => {}
            Ok(Ok(batch)) => assert!(batch.is_empty(), "got messages from a string key"),
            Err(_) => panic!("next_batch hung on a string key"),
        }
    }
    // Still failing, not ended: every call returns an error.
    for _ in 0..3 {
        assert!(consumer.next_batch(10).await.is_err());
    }

    // Fixed: the stream comes back (its group is created again) and consumption goes on.
    let _: () = redis_cmd(&broker, redis::cmd("DEL").arg(&topic)).await;
    broker
        .publish(OutgoingMessage::new(&topic, "after"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(Instant::now() < deadline, "nothing after the key was fixed");
        if let Ok(Ok(batch)) = tokio::time::timeout(WAIT, consumer.next_batch(10)).await {
            got.extend(batch);
        }
    }
    assert_eq!(&got[0].payload[..], b"after");
    consumer.close().await.unwrap();
}

/// The runtime: a group whose topic key is a string is retried alone; the other group
/// handles its messages meanwhile, and the broken one starts once the key is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_topic_does_not_stop_the_other_groups() {
    let broker = connect(quick()).await;
    let (good, bad) = (unique("rt-good"), unique("rt-bad"));
    let _: () = redis_cmd(&broker, redis::cmd("SET").arg(&bad).arg("x")).await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = |name: &str, topic: &str, group: &str| {
        let seen = Arc::clone(&seen);
        HandlerSpec::new(name, [topic.to_owned()], move |inv: Invocation| {
            let seen = Arc::clone(&seen);
            async move {
                let body = String::from_utf8_lossy(&inv.message.payload).into_owned();
                seen.lock().unwrap().push(body);
                Ok(())
            }
        })
        .group(group)
    };
    let runtime = Runtime::builder()
        .broker(broker.clone().into_dyn())
        .without_registered()
        .install_global_producer(false)
        .handler(handler("good", &good, &unique("good-group")))
        .handler(handler("bad", &bad, &unique("bad-group")))
        .start()
        .await
        .expect("the runtime starts with one broken topic");

    broker
        .publish(OutgoingMessage::new(&good, "good-1"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !seen.lock().unwrap().contains(&"good-1".to_owned()) {
        assert!(Instant::now() < deadline, "the good group handled nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Fixed: the broken group subscribes on its next try (1 s, then 2 s …), from `$`, so
    // keep publishing until one arrives.
    let _: () = redis_cmd(&broker, redis::cmd("DEL").arg(&bad)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    while !seen.lock().unwrap().iter().any(|s| s.starts_with("bad-")) {
        assert!(Instant::now() < deadline, "the fixed group never started");
        broker
            .publish(OutgoingMessage::new(&bad, format!("bad-{n}")))
            .await
            .unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    runtime.shutdown().await.unwrap();
}
