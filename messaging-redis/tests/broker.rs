//! The broker against a real Redis (127.0.0.1:6379): entry layout, groups, acknowledgement,
//! reclaiming, cancel safety, trimming, lost groups. Run `scripts/start-redis.sh` first.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use messaging_core::broker::StartFrom;
use messaging_core::dlq::DLQ_HEADER;
use messaging_core::message::header;
use messaging_core::{Broker, OutgoingMessage, Position};
use messaging_redis::{KEEP_GROUP, RedisOptions};

const WAIT: Duration = Duration::from_secs(10);

fn numbers(messages: &[messaging_core::Message]) -> BTreeSet<usize> {
    messages
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn entries_carry_payload_key_and_every_header() {
    let broker = connect(RedisOptions::default()).await;
    let topic = unique("layout");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    let out = OutgoingMessage::new(&topic, &[0xff, 0x00, b'a'][..])
        .with_key("order-42")
        .with_header(header::EVENT_NAME, "order.created")
        .with_header(header::TRACE_ID, "trace-1")
        .with_header("custom", "é");
    broker.publish(out.clone()).await.unwrap();

    let got = collect(&mut *consumer, 1, WAIT).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.topic, topic);
    assert_eq!(m.key_str(), Some("order-42"));
    assert_eq!(
        m.payload, out.payload,
        "binary payloads arrive byte for byte"
    );
    assert_eq!(
        m.headers, out.headers,
        "headers arrive as published, the key apart"
    );
    let Position::StreamId(id) = &m.position else {
        panic!("position {:?}", m.position)
    };

    // The raw entry is the documented layout: `(id, [(field, value)])` per entry.
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let raw: Entries = redis_cmd(&broker, redis::cmd("XRANGE").arg(&topic).arg("-").arg("+")).await;
    assert_eq!(&raw[0].0, id);
    let names: Vec<&str> = raw[0].1.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "payload",
            "x-message-key",
            "custom",
            "x-event-name",
            "x-trace-id"
        ]
    );
}

#[tokio::test]
async fn acknowledged_entries_leave_the_pending_list() {
    let broker = connect(RedisOptions::default()).await;
    let topic = unique("ack");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &topic, 5).await;
    let got = collect(&mut *consumer, 5, WAIT).await;
    assert_eq!(numbers(&got), (0..5).collect());
    assert_eq!(pending(&broker, &topic, "g").await, 5);
    let acker = consumer.acker();
    let acks = got.iter().map(|m| acker.ack(m));
    for result in futures::future::join_all(acks).await {
        result.unwrap();
    }
    assert_eq!(
        settle_pending(&broker, &topic, "g", 0).await,
        0,
        "all five acknowledged"
    );
}

#[tokio::test]
async fn groups_start_at_the_end_or_at_the_beginning() {
    let broker = connect(RedisOptions::default()).await;
    let topic = unique("start");
    publish_n(&broker, &topic, 3).await;
    let mut latest = broker
        .subscribe(subscription("late", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    let mut earliest = broker
        .subscribe(subscription("early", &[&topic], StartFrom::Earliest))
        .await
        .unwrap();
    broker
        .publish(OutgoingMessage::new(&topic, "3"))
        .await
        .unwrap();
    assert_eq!(numbers(&collect(&mut *latest, 1, WAIT).await), [3].into());
    assert_eq!(
        numbers(&collect(&mut *earliest, 4, WAIT).await),
        (0..4).collect()
    );
    assert_nothing(&mut *latest, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn one_consumer_reads_several_streams_and_respects_max() {
    let broker = connect(RedisOptions::default()).await;
    let (a, b) = (unique("multi-a"), unique("multi-b"));
    let mut consumer = broker
        .subscribe(subscription("g", &[&a, &b], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &a, 10).await;
    publish_n(&broker, &b, 10).await;
    let mut all = Vec::new();
    while all.len() < 20 {
        let batch = tokio::time::timeout(WAIT, consumer.next_batch(3))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !batch.is_empty() && batch.len() <= 3,
            "batch of {}",
            batch.len()
        );
        all.extend(batch.iter().map(|m| (m.topic.clone(), m.payload.clone())));
    }
    assert_eq!(all.iter().filter(|(t, _)| *t == a).count(), 10);
    assert_eq!(all.iter().filter(|(t, _)| *t == b).count(), 10);
}

#[tokio::test]
async fn a_dropped_consumer_hands_its_entries_back() {
    let broker = connect(quick()).await;
    let topic = unique("handback");
    let mut first = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    let mut second = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &topic, 4).await;
    let held = collect(&mut *first, 4, WAIT).await;
    first.acker().ack(&held[0]).await.unwrap();
    drop(first);
    let again = collect(&mut *second, 3, WAIT).await;
    assert_eq!(
        numbers(&again),
        [1, 2, 3].into(),
        "the unacknowledged three, not the acknowledged one"
    );
}

#[tokio::test]
async fn a_crashed_consumer_is_reclaimed_after_the_idle_time_and_a_live_one_is_not() {
    let options = RedisOptions {
        release_on_drop: false,
        ..quick()
    };
    let broker = connect(options).await;
    let topic = unique("reclaim");
    let mut live = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    let mut crashed = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    let mut other = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();

    publish_n(&broker, &topic, 2).await;
    let kept = collect(&mut *live, 2, WAIT).await;
    broker
        .publish(OutgoingMessage::new(&topic, "7"))
        .await
        .unwrap();
    let lost = collect(&mut *crashed, 1, WAIT).await;
    assert_eq!(numbers(&lost), [7].into());
    drop(crashed);

    // Four idle times: the live consumer's entries are refreshed, the crashed one's are not.
    let reclaimed = collect(&mut *other, 3, Duration::from_secs(2)).await;
    assert_eq!(
        numbers(&reclaimed),
        [7].into(),
        "only the crashed consumer's entry moves"
    );
    let acker = live.acker();
    for m in &kept {
        acker.ack(m).await.unwrap();
    }
}

#[tokio::test]
async fn cancelled_fetches_lose_nothing() {
    // No reclaiming within the test: only the consumer's own re-read can recover.
    let broker = connect(RedisOptions::default()).await;
    let topic = unique("cancel");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    let acker = consumer.acker();
    let mut seen = BTreeSet::new();
    for i in 0..200usize {
        broker
            .publish(OutgoingMessage::new(&topic, i.to_string()))
            .await
            .unwrap();
        // Drop the fetch at varying points: before the read, while it is on the wire, after.
        let limit = Duration::from_micros(fastrand::u64(0..400));
        if let Ok(batch) = tokio::time::timeout(limit, consumer.next_batch(5)).await {
            for m in batch.unwrap() {
                acker.ack(&m).await.unwrap();
                seen.insert(
                    std::str::from_utf8(&m.payload)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap(),
                );
            }
        }
    }
    let rest = collect(&mut *consumer, 200 - seen.len(), WAIT).await;
    seen.extend(numbers(&rest));
    assert_eq!(
        seen,
        (0..200).collect(),
        "every message arrives despite the cancellations"
    );
}

#[tokio::test]
async fn entries_deleted_while_pending_do_not_wedge_the_group() {
    let broker = connect(quick()).await;
    let topic = unique("deleted");
    let mut first = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    let mut second = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &topic, 3).await;
    let held = collect(&mut *first, 3, WAIT).await;
    for m in &held[..2] {
        let Position::StreamId(id) = &m.position else {
            unreachable!()
        };
        let _: usize = redis_cmd(&broker, redis::cmd("XDEL").arg(&topic).arg(id)).await;
    }
    drop(first);
    broker
        .publish(OutgoingMessage::new(&topic, "3"))
        .await
        .unwrap();
    let got = collect(&mut *second, 2, WAIT).await;
    assert_eq!(
        numbers(&got),
        [2, 3].into(),
        "the surviving entry and the new one"
    );
    for m in &got {
        second.acker().ack(m).await.unwrap();
    }
    assert_eq!(
        settle_pending(&broker, &topic, "g", 0).await,
        0,
        "deleted entries left the pending list"
    );
}

#[tokio::test]
async fn a_group_lost_by_the_server_is_created_again() {
    let broker = connect(quick()).await;
    let topic = unique("nogroup");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &topic, 1).await;
    assert_eq!(collect(&mut *consumer, 1, WAIT).await.len(), 1);
    // What a restart without persistence looks like to the consumer.
    let _: usize = redis_cmd(&broker, redis::cmd("DEL").arg(&topic)).await;
    let fetch = tokio::spawn(async move {
        let got = collect(&mut *consumer, 2, WAIT).await;
        (consumer, got)
    });
    // The consumer finds its group gone and creates it again (with the stream): only then
    // is what follows published.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while redis_cmd::<usize>(&broker, redis::cmd("EXISTS").arg(&topic)).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the consumer to create the group (and stream) {topic} again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish_n(&broker, &topic, 2).await;
    let (_consumer, got) = fetch.await.unwrap();
    assert_eq!(numbers(&got), [0, 1].into());
}

#[tokio::test]
async fn closing_leaves_the_group() {
    let broker = connect(RedisOptions::default()).await;
    let topic = unique("close");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    publish_n(&broker, &topic, 1).await;
    let got = collect(&mut *consumer, 1, WAIT).await;
    consumer.acker().ack(&got[0]).await.unwrap();
    consumer.close().await.unwrap();
    let consumers: Vec<redis::Value> = redis_cmd(
        &broker,
        redis::cmd("XINFO").arg("CONSUMERS").arg(&topic).arg("g"),
    )
    .await;
    assert!(consumers.is_empty(), "{consumers:?}");
}

#[tokio::test]
async fn dead_letter_streams_exist_before_their_first_record_and_are_never_trimmed() {
    let options = RedisOptions {
        maxlen: Some(10),
        ..RedisOptions::default()
    };
    let broker = connect(options).await;
    let (topic, dlq) = (unique("trim"), unique("trim.dlq"));
    broker
        .declare_topics(std::slice::from_ref(&dlq))
        .await
        .unwrap();
    let exists: usize = redis_cmd(&broker, redis::cmd("EXISTS").arg(&dlq)).await;
    assert_eq!(exists, 1);
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        redis_cmd(&broker, redis::cmd("XINFO").arg("GROUPS").arg(&dlq)).await;
    assert_eq!(groups.len(), 1);
    assert!(
        matches!(&groups[0]["name"], redis::Value::BulkString(n) if n == KEEP_GROUP.as_bytes())
    );

    for i in 0..500 {
        broker
            .publish(OutgoingMessage::new(&topic, i.to_string()))
            .await
            .unwrap();
        broker
            .publish(OutgoingMessage::new(&dlq, i.to_string()).with_header(DLQ_HEADER, "1"))
            .await
            .unwrap();
    }
    let len: usize = redis_cmd(&broker, redis::cmd("XLEN").arg(&topic)).await;
    assert!(len < 500, "MAXLEN ~ 10 trims the topic (len {len})");
    let len: usize = redis_cmd(&broker, redis::cmd("XLEN").arg(&dlq)).await;
    assert_eq!(len, 500, "dead-letter records are kept");
    let browsed = broker.browse(&dlq, 3).await.unwrap();
    assert_eq!(
        numbers(&browsed),
        [0, 1, 2].into(),
        "browse reads from the beginning"
    );
}

#[tokio::test]
async fn the_factory_is_registered_and_reads_the_url() {
    assert!(messaging_core::linked_backends().contains(&"redis"));
    let config = messaging_core::Config::default()
        .with_backend("redis")
        .setting("REDIS_URL", format!("{URL}?reclaim_idle=3s"));
    let broker = messaging_core::broker::connect_once(&config)
        .await
        .expect("connect through the factory");
    assert_eq!(broker.name(), "redis");

    let bad = config.setting("REDIS_URL", "redis://127.0.0.1:1/0");
    assert!(
        messaging_core::broker::connect_once(&bad).await.is_err(),
        "nothing listens on port 1"
    );
}

#[tokio::test]
async fn a_failing_publish_fails_alone_in_its_pipeline() {
    let broker = connect(RedisOptions::default()).await;
    let (good, bad) = (unique("good"), unique("bad"));
    // Not a stream: XADD answers WRONGTYPE.
    let _: () = redis_cmd(&broker, redis::cmd("SET").arg(&bad).arg("x")).await;
    let sends = (0..200).map(|i| {
        let topic = if i % 10 == 3 { &bad } else { &good };
        broker.publish(OutgoingMessage::new(topic, i.to_string()))
    });
    let results = futures::future::join_all(sends).await;
    for (i, result) in results.iter().enumerate() {
        match (i % 10 == 3, result) {
            (true, Err(e)) => assert!(e.to_string().contains("WRONGTYPE"), "{e}"),
            (false, Ok(())) => {}
            (expect_error, result) => {
                panic!("publish {i}: expected error {expect_error}, got {result:?}")
            }
        }
    }
    let len: usize = redis_cmd(&broker, redis::cmd("XLEN").arg(&good)).await;
    assert_eq!(len, 180);
    let reserved =
        OutgoingMessage::new(&good, "x").with_header(messaging_redis::PAYLOAD_FIELD, "y");
    assert!(
        broker.publish(reserved).await.is_err(),
        "a header named `payload` is refused"
    );
}

#[tokio::test]
async fn dead_consumers_with_nothing_pending_are_forgotten() {
    let options = RedisOptions {
        forget_after: Duration::from_millis(300),
        ..RedisOptions::default()
    };
    let broker = connect(options).await;
    let topic = unique("forget");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    // A crashed process's name, and one that still holds an entry.
    let _: usize = redis_cmd(
        &broker,
        redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&topic)
            .arg("g")
            .arg("ghost"),
    )
    .await;
    publish_n(&broker, &topic, 1).await;
    let _: redis::Value = redis_cmd(
        &broker,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("holder")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&topic)
            .arg(">"),
    )
    .await;
    let names = || async {
        let consumers: Vec<std::collections::HashMap<String, redis::Value>> = redis_cmd(
            &broker,
            redis::cmd("XINFO").arg("CONSUMERS").arg(&topic).arg("g"),
        )
        .await;
        consumers
            .iter()
            .map(|c| match &c["name"] {
                redis::Value::BulkString(n) => String::from_utf8_lossy(n).into_owned(),
                other => panic!("{other:?}"),
            })
            .collect::<BTreeSet<_>>()
    };
    assert!(names().await.contains("ghost"));
    // Keep the live consumer reading, as a running one does.
    assert_nothing(&mut *consumer, Duration::from_millis(1500)).await;
    let left = names().await;
    assert!(
        !left.contains("ghost"),
        "the idle consumer with nothing pending is forgotten: {left:?}"
    );
    assert!(
        left.contains("holder"),
        "a consumer holding entries is kept: {left:?}"
    );
    assert_eq!(left.len(), 2, "the live consumer is kept: {left:?}");
}
