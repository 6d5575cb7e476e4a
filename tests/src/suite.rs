//! The conformance test bodies. Each takes the broker's connect function, builds handlers in
//! code on fresh topic names, and asserts on what arrived where.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging_core::FromContext as _;
use messaging_core::{
    Broker, DeadLetterRecord, Event, FailureKind, HandlerError, HandlerSpec, Invocation, Message,
    Metadata, OutgoingMessage, Producer, ReplyStream, RequestError, RetryPolicy, Runtime,
    SendOptions, decode_event, decode_json, metrics::metrics, reply::Responder,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Connect;

/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(60);

/// Fresh names and helpers for one test.
pub struct Scenario {
    prefix: String,
    connect: Connect,
}

impl Scenario {
    /// A scenario with names no other run uses.
    pub fn new(connect: Connect) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Self {
            prefix: format!("ct-{}", &id[id.len() - 12..]),
            connect,
        }
    }

    /// A topic name unique to this scenario.
    pub fn topic(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// A group name unique to this scenario.
    pub fn group(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A new connection to the broker under test.
    pub async fn broker(&self) -> Arc<dyn Broker> {
        (self.connect)().await
    }

    /// Starts a runtime with only `handlers`, reading fresh topics from their beginning.
    pub async fn start(&self, handlers: Vec<HandlerSpec>) -> Runtime {
        self.start_with(handlers, |b| b).await
    }

    /// [`Scenario::start`] with the builder adjusted.
    pub async fn start_with(
        &self,
        handlers: Vec<HandlerSpec>,
        adjust: impl FnOnce(messaging_core::RuntimeBuilder) -> messaging_core::RuntimeBuilder,
    ) -> Runtime {
        self.start_on(self.broker().await, handlers, adjust).await
    }

    /// [`Scenario::start_with`] on `broker` (a connection of the test's own, e.g. wrapped to
    /// watch what it acknowledges).
    pub async fn start_on(
        &self,
        broker: Arc<dyn Broker>,
        handlers: Vec<HandlerSpec>,
        adjust: impl FnOnce(messaging_core::RuntimeBuilder) -> messaging_core::RuntimeBuilder,
    ) -> Runtime {
        let mut builder = Runtime::builder()
            .broker(broker)
            .config(conformance_config())
            .without_registered()
            .install_global_producer(false)
            .from_beginning(true)
            .concurrency(4)
            .shutdown_timeout(Duration::from_secs(10));
        for h in handlers {
            // Groups are scoped to the scenario too, so runs sharing a broker (CI and a
            // developer, two test binaries) never split each other's messages.
            let h = if h.group_name().starts_with(&self.prefix) {
                h
            } else {
                let group = self.group(h.group_name());
                h.group(group)
            };
            builder = builder.handler(h);
        }
        adjust(builder).start().await.expect("runtime starts")
    }

    /// A producer on a fresh connection.
    pub async fn producer(&self) -> Producer {
        Producer::new(self.broker().await, conformance_config())
    }
}

pub(crate) fn conformance_config() -> messaging_core::Config {
    messaging_core::Config::default().with_source("conformance")
}

/// Waits until `done` holds, panicking with `what` after a minute.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a negative check ("not again", "exactly once") watches after its positive marker
/// arrived: past the time each broker under test takes to hand a message that was not
/// acknowledged to a running member of its group. Kafka reads from the committed offset as
/// soon as the member has its partitions, RabbitMQ requeues at once what a closed channel
/// held, the memory broker at once, and Redis at its next `XAUTOCLAIM` round, at most 1 s
/// apart with the default `reclaim_idle` of 30 s (a closing consumer releases what it held,
/// so it can be claimed at once). Also past every retry delay the suite declares (≤ 500 ms).
pub const REDELIVERY: Duration = Duration::from_secs(3);

/// Watches `holds` for [`REDELIVERY`], returning early the moment it fails, so that the
/// caller's assertion which follows reports what was seen.
pub async fn watch_for_redelivery(mut holds: impl FnMut() -> bool) {
    let until = Instant::now() + REDELIVERY;
    while holds() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shared, lockable list of what handlers saw.
pub struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Log<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Clone> Log<T> {
    /// Appends.
    pub fn push(&self, value: T) {
        self.0.lock().unwrap().push(value);
    }
    /// A copy of everything so far.
    pub fn all(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
    /// How many so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A handler that records every message it gets and succeeds.
pub fn recorder(name: &str, topic: &str, log: Log<Arc<Message>>) -> HandlerSpec {
    recorder_on(name, [topic], log)
}

/// [`recorder`] on several topics.
pub fn recorder_on<'a>(
    name: &str,
    topics: impl IntoIterator<Item = &'a str>,
    log: Log<Arc<Message>>,
) -> HandlerSpec {
    HandlerSpec::new(name, topics, move |inv: Invocation| {
        let log = log.clone();
        async move {
            log.push(inv.message);
            Ok(())
        }
    })
}

/// A handler on `<topic>.dlq` that collects the DLQ records.
pub fn dlq_reader(scenario: &Scenario, topic: &str, log: Log<DeadLetterRecord>) -> HandlerSpec {
    HandlerSpec::new(
        "dlq_reader",
        [format!("{topic}.dlq")],
        move |inv: Invocation| {
            let log = log.clone();
            async move {
                log.push(
                    DeadLetterRecord::from_bytes(&inv.message.payload)
                        .map_err(HandlerError::permanent)?,
                );
                Ok(())
            }
        },
    )
    .group(scenario.group("dlq-reader"))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    total: f64,
}

/// Plain messages reach a `#[message_handler]`-style handler with key and headers intact.
pub async fn delivers_to_a_message_handler(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("orders");
    let log = Log::default();
    let runtime = s.start(vec![recorder("orders", &topic, log.clone())]).await;
    let producer = s.producer().await;
    for i in 0..3u64 {
        let order = Order {
            order_id: i,
            total: 9.5,
        };
        let options = SendOptions::key(format!("k{i}")).header("x-custom", format!("v{i}"));
        producer
            .send_with(&topic, &order, options)
            .await
            .expect("send is acknowledged");
    }
    eventually("3 messages", || log.len() >= 3).await;
    let mut got: Vec<(Order, Option<String>, Option<String>)> = log
        .all()
        .iter()
        .map(|m| {
            (
                decode_json(m).unwrap(),
                m.key_str().map(str::to_owned),
                m.header("x-custom").map(str::to_owned),
            )
        })
        .collect();
    got.sort_by_key(|(o, _, _)| o.order_id);
    for (i, (order, key, header)) in got.iter().enumerate() {
        assert_eq!(
            order,
            &Order {
                order_id: i as u64,
                total: 9.5
            }
        );
        assert_eq!(key.as_deref(), Some(format!("k{i}").as_str()), "key kept");
        assert_eq!(
            header.as_deref(),
            Some(format!("v{i}").as_str()),
            "header kept"
        );
    }
    assert_eq!(log.len(), 3, "each message handled once");
    runtime.shutdown().await.unwrap();
}

/// Enveloped events are routed by name to `#[on_event]`-style handlers of one group.
pub async fn delivers_enveloped_events_by_name(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("user-events");
    let created: Log<Event<serde_json::Value>> = Log::default();
    let deleted: Log<Event<serde_json::Value>> = Log::default();
    let on = |name: &str, log: Log<Event<serde_json::Value>>| {
        HandlerSpec::new(name, [topic.clone()], move |inv: Invocation| {
            let log = log.clone();
            async move {
                log.push(decode_event(
                    &inv.message,
                    &messaging_core::EnvelopeFields::STANDARD,
                )?);
                Ok(())
            }
        })
        .group(s.group("users"))
    };
    let runtime = s
        .start(vec![
            on("on_created", created.clone()).on_event("user.created"),
            on("on_deleted", deleted.clone()).on_event("user.deleted"),
        ])
        .await;
    let producer = s.producer().await;
    let id = producer
        .publish_event("user.created", &json!({"id": 1}), &topic)
        .await
        .unwrap();
    producer
        .publish_event("user.deleted", &json!({"id": 2}), &topic)
        .await
        .unwrap();
    eventually("both events", || created.len() == 1 && deleted.len() == 1).await;
    let event = &created.all()[0];
    assert_eq!(event.id, id);
    assert_eq!(event.name, "user.created");
    assert_eq!(event.data, json!({"id": 1}));
    assert_eq!(event.source, "conformance");
    assert_eq!(deleted.all()[0].data, json!({"id": 2}));
    runtime.shutdown().await.unwrap();
}

/// A group reading several topics (one consumer for all of them): each handler gets the
/// messages of its own topic, and each message says which topic it came from. One group has
/// a handler per topic, another one handler on both.
pub async fn one_group_reads_several_topics(connect: Connect) {
    let s = Scenario::new(connect);
    let (orders, payments) = (s.topic("orders"), s.topic("payments"));
    let (of_orders, of_payments, of_both): (Log<Arc<Message>>, _, _) =
        (Log::default(), Log::default(), Log::default());
    let both = recorder_on(
        "both",
        [orders.as_str(), payments.as_str()],
        of_both.clone(),
    );
    let runtime = s
        .start(vec![
            recorder("orders", &orders, of_orders.clone()).group(s.group("shop")),
            recorder("payments", &payments, of_payments.clone()).group(s.group("shop")),
            both.group(s.group("audit")),
        ])
        .await;
    let producer = s.producer().await;
    for (topic, n) in [(&orders, 3), (&payments, 2)] {
        for i in 0..n {
            producer
                .send_raw(OutgoingMessage::new(topic.as_str(), format!("{topic} {i}")))
                .await
                .unwrap();
        }
    }
    eventually("every message to its handlers", || {
        of_orders.len() == 3 && of_payments.len() == 2 && of_both.len() == 5
    })
    .await;
    for (log, topic) in [(&of_orders, &orders), (&of_payments, &payments)] {
        for message in log.all() {
            assert_eq!(&*message.topic, topic.as_str());
            assert!(String::from_utf8_lossy(&message.payload).starts_with(topic.as_str()));
        }
    }
    for message in of_both.all() {
        assert!(
            String::from_utf8_lossy(&message.payload).starts_with(&*message.topic),
            "{message:?} names the topic it came from"
        );
    }
    runtime.shutdown().await.unwrap();
}

/// An event name no handler of the group takes is acknowledged and counted, not retried.
pub async fn acknowledges_unknown_events_without_retrying(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("events");
    let log = Log::default();
    let handler = || {
        recorder("known", &topic, log.clone())
            .on_event("known")
            .group(s.group("g"))
    };
    let runtime = s.start(vec![handler()]).await;
    let producer = s.producer().await;
    producer
        .publish_event("nobody.handles.this", &json!({}), &topic)
        .await
        .unwrap();
    producer
        .publish_event("known", &json!({"n": 1}), &topic)
        .await
        .unwrap();
    eventually("the known event", || log.len() == 1).await;
    eventually("the unknown event counted", || {
        metrics().skipped(&topic, "unknown_event") == 1
    })
    .await;
    runtime.shutdown().await.unwrap();

    // A restart of the group must not see the unknown event again: it was acknowledged.
    let runtime = s.start(vec![handler()]).await;
    producer
        .publish_event("known", &json!({"n": 2}), &topic)
        .await
        .unwrap();
    eventually("the second known event", || log.len() == 2).await;
    watch_for_redelivery(|| metrics().skipped(&topic, "unknown_event") == 1).await;
    assert_eq!(
        metrics().skipped(&topic, "unknown_event"),
        1,
        "unknown event redelivered"
    );
    runtime.shutdown().await.unwrap();
}

/// Different groups each get every message.
pub async fn each_group_gets_every_message(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("fanout");
    let (a, b) = (Log::default(), Log::default());
    let runtime = s
        .start(vec![
            recorder("a", &topic, a.clone()).group(s.group("a")),
            recorder("b", &topic, b.clone()).group(s.group("b")),
        ])
        .await;
    let producer = s.producer().await;
    for i in 0..50 {
        producer.send(&topic, &json!({"i": i})).await.unwrap();
    }
    eventually("50 messages in each group", || {
        a.len() >= 50 && b.len() >= 50
    })
    .await;
    for log in [&a, &b] {
        let ids: HashSet<u64> = log
            .all()
            .iter()
            .map(|m| {
                decode_json::<serde_json::Value>(m).unwrap()["i"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 50, "every message once per group");
    }
    runtime.shutdown().await.unwrap();
}

/// Two instances of one group split the messages; none is handled twice.
pub async fn instances_of_a_group_share_without_duplicates(connect: Connect) {
    const N: u64 = 10_000;
    let s = Scenario::new(connect);
    let topic = s.topic("shared");
    let group = s.group("workers");
    let (one, two) = (Log::default(), Log::default());
    let first = s
        .start(vec![recorder("w", &topic, one.clone()).group(&group)])
        .await;
    let second = s
        .start(vec![recorder("w", &topic, two.clone()).group(&group)])
        .await;
    let producer = s.producer().await;
    // Published in chunks over about a second, so both instances are active while it flows.
    for chunk in 0..20 {
        let sends = (0..N / 20).map(|i| {
            let producer = producer.clone();
            let topic = topic.clone();
            let n = chunk * (N / 20) + i;
            async move {
                producer
                    .send_with(
                        &topic,
                        &json!({"n": n}),
                        SendOptions::key(format!("k{}", n % 64)),
                    )
                    .await
            }
        });
        for result in futures::future::join_all(sends).await {
            result.expect("send is acknowledged");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("all messages handled", || {
        one.len() + two.len() >= N as usize
    })
    .await;
    watch_for_redelivery(|| one.len() + two.len() == N as usize).await;
    let mut seen = HashMap::new();
    for m in one.all().iter().chain(two.all().iter()) {
        let n = decode_json::<serde_json::Value>(m).unwrap()["n"]
            .as_u64()
            .unwrap();
        *seen.entry(n).or_insert(0) += 1;
    }
    let duplicates: Vec<_> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(seen.len() as u64, N, "every message handled");
    assert!(
        duplicates.is_empty(),
        "{} messages handled twice, e.g. {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both instances worked: {} and {}",
        one.len(),
        two.len()
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// With concurrency, messages of one key are still handled in publishing order.
pub async fn keeps_order_per_key(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("ordered");
    let log = Log::default();
    let handler = HandlerSpec::new("ordered", [topic.clone()], {
        let log = log.clone();
        move |inv: Invocation| {
            let log = log.clone();
            async move {
                // Uneven work per message, so lanes interleave.
                let value: serde_json::Value = decode_json(&inv.message)?;
                if value["seq"].as_u64().unwrap_or(0).is_multiple_of(7) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                log.push((
                    value["key"].as_str().unwrap_or("").to_owned(),
                    value["seq"].as_u64().unwrap_or(0),
                ));
                Ok(())
            }
        }
    });
    let runtime = s.start(vec![handler]).await;
    let producer = s.producer().await;
    for seq in 0..300u64 {
        let key = format!("key-{}", seq % 5);
        producer
            .send_with(
                &topic,
                &json!({"key": key, "seq": seq}),
                SendOptions::key(&key),
            )
            .await
            .unwrap();
    }
    eventually("300 messages", || log.len() >= 300).await;
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (key, seq) in log.all() {
        if let Some(previous) = last.insert(key.clone(), seq) {
            assert!(seq > previous, "key {key}: {seq} handled after {previous}");
        }
    }
    assert_eq!(last.len(), 5);
    runtime.shutdown().await.unwrap();
}

/// Two failures then success under 3 retries 200 ms apart: 3 calls, the waits respected,
/// acknowledged, no DLQ record.
pub async fn retries_then_succeeds_with_declared_delays(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("flaky");
    let calls: Log<(Instant, u32)> = Log::default();
    let dlq = Log::default();
    let delay = Duration::from_millis(200);
    let flaky = HandlerSpec::new("flaky", [topic.clone()], {
        let calls = calls.clone();
        move |inv: Invocation| {
            let calls = calls.clone();
            async move {
                let meta = Metadata::from_context(&inv)?;
                calls.push((Instant::now(), meta.attempt));
                if calls.len() <= 2 {
                    return Err(HandlerError::retryable("not yet"));
                }
                Ok(())
            }
        }
    })
    .retry(RetryPolicy::new(3, delay));
    let runtime = s
        .start(vec![flaky, dlq_reader(&s, &topic, dlq.clone())])
        .await;
    s.producer()
        .await
        .send(&topic, &json!({"x": 1}))
        .await
        .unwrap();
    eventually("3 calls", || calls.len() >= 3).await;
    watch_for_redelivery(|| calls.len() == 3).await;
    let calls = calls.all();
    assert_eq!(calls.len(), 3, "called exactly 3 times");
    assert_eq!(
        calls.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempt numbers"
    );
    for pair in calls.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= delay,
            "retry came after {gap:?}, before the declared {delay:?}"
        );
    }
    assert!(dlq.is_empty(), "no DLQ record for a message that succeeded");
    runtime.shutdown().await.unwrap();

    // Acknowledged: a restarted group does not get it again.
    let again = Log::default();
    let runtime = s
        .start(vec![recorder("flaky", &topic, again.clone())])
        .await;
    s.producer()
        .await
        .send(&topic, &json!({"x": 2}))
        .await
        .unwrap();
    eventually("the marker message", || !again.is_empty()).await;
    watch_for_redelivery(|| again.len() == 1).await;
    assert_eq!(
        again.len(),
        1,
        "the retried message was redelivered after success"
    );
    runtime.shutdown().await.unwrap();
}

/// A handler that always fails under `max_retries = 2` gives one DLQ record with every field.
pub async fn dead_letters_after_retries_with_full_record(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("payments");
    let dlq = Log::default();
    let calls = Log::default();
    let failing = HandlerSpec::new("always_fails", [topic.clone()], {
        let calls = calls.clone();
        move |_inv: Invocation| {
            calls.push(());
            async move { Err::<(), _>(HandlerError::retryable("card declined")) }
        }
    })
    .group(s.group("payments"))
    .retry(RetryPolicy::new(2, Duration::from_millis(50)));
    let runtime = s
        .start(vec![failing, dlq_reader(&s, &topic, dlq.clone())])
        .await;
    let producer = s.producer().await;
    let (_, mut message) = producer
        .envelope(
            "order.created",
            &json!({"order_id": 42}),
            &topic,
            Some("42".into()),
        )
        .unwrap();
    message.headers.insert("x-trace-id", "trace-abc");
    let payload = message.payload.clone();
    producer.send_raw(message).await.unwrap();
    eventually("the DLQ record", || !dlq.is_empty()).await;
    watch_for_redelivery(|| dlq.len() == 1 && calls.len() == 3).await;
    let records = dlq.all();
    assert_eq!(records.len(), 1, "exactly one DLQ record");
    let r = &records[0];
    assert_eq!(r.version, 1);
    assert_eq!(r.attempts, 3);
    assert_eq!(calls.len(), 3);
    assert_eq!(r.error.kind, FailureKind::Handler);
    assert!(
        r.error.message.contains("card declined"),
        "{}",
        r.error.message
    );
    assert!(r.first_failure_at <= r.last_failure_at && r.last_failure_at <= r.dead_lettered_at);
    assert_eq!(r.handler, "always_fails");
    assert_eq!(r.group, s.group("payments"));
    assert_eq!(r.event_name.as_deref(), Some("order.created"));
    assert_eq!(r.source, "conformance");
    assert_eq!(r.trace_id.as_deref(), Some("trace-abc"));
    assert_eq!(r.original.topic, topic);
    assert_eq!(r.original.key.as_deref(), Some("42"));
    assert_eq!(r.original.payload.as_bytes(), &payload[..]);
    assert_eq!(r.original.encoding, None);
    assert_eq!(
        r.original.headers.get("x-event-name"),
        Some("order.created")
    );
    assert_eq!(r.original.headers.get("x-trace-id"), Some("trace-abc"));
    assert!(
        !r.original.position.is_empty() && r.original.position != "unknown",
        "position: {}",
        r.original.position
    );
    runtime.shutdown().await.unwrap();
}

/// Bad payloads go to the DLQ at once (`decode`, `schema`), a permanent error skips retries,
/// a panic is retried and ends as `panic`, and binary bodies survive in base64.
pub async fn dead_letters_bad_payloads_at_once(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("typed");
    let dlq = Log::default();
    let typed = HandlerSpec::new("typed", [topic.clone()], |inv: Invocation| async move {
        let order: Order = decode_json(&inv.message)?;
        match order.order_id {
            1 => Err(HandlerError::permanent("order 1 is cancelled")),
            2 => panic!("order 2 explodes"),
            _ => Ok(()),
        }
    })
    .retry(RetryPolicy::new(2, Duration::from_millis(20)));
    let runtime = s
        .start(vec![typed, dlq_reader(&s, &topic, dlq.clone())])
        .await;
    let producer = s.producer().await;
    let raw = |body: &[u8], key: &str| OutgoingMessage::new(&topic, body.to_vec()).with_key(key);
    producer
        .send_raw(raw(b"{not json", "decode"))
        .await
        .unwrap();
    producer
        .send_raw(raw(br#"{"order_id":"x"}"#, "schema"))
        .await
        .unwrap();
    producer
        .send_raw(raw(&[0xff, 0xfe, 0x00], "binary"))
        .await
        .unwrap();
    producer
        .send_raw(raw(br#"{"order_id":1,"total":1.0}"#, "permanent"))
        .await
        .unwrap();
    producer
        .send_raw(raw(br#"{"order_id":2,"total":1.0}"#, "panic"))
        .await
        .unwrap();
    producer
        .send_raw(raw(br#"{"order_id":3,"total":1.0}"#, "fine"))
        .await
        .unwrap();
    eventually("5 DLQ records", || dlq.len() >= 5).await;
    watch_for_redelivery(|| dlq.len() == 5).await;
    let by_key: HashMap<String, DeadLetterRecord> = dlq
        .all()
        .into_iter()
        .map(|r| (r.original.key.clone().unwrap_or_default(), r))
        .collect();
    assert_eq!(by_key.len(), 5, "one record each: {:?}", by_key.keys());
    let expect = |key: &str, kind: FailureKind, attempts: u32| {
        let r = &by_key[key];
        assert_eq!(
            (r.error.kind, r.attempts),
            (kind, attempts),
            "{key}: {}",
            r.error.message
        );
    };
    expect("decode", FailureKind::Decode, 1);
    expect("schema", FailureKind::Schema, 1);
    expect("binary", FailureKind::Decode, 1);
    expect("permanent", FailureKind::Handler, 1);
    expect("panic", FailureKind::Panic, 3);
    assert!(by_key["panic"].error.message.contains("order 2 explodes"));
    let binary = &by_key["binary"].original;
    assert_eq!(binary.encoding.as_deref(), Some("base64"));
    assert_eq!(&binary.payload_bytes().unwrap()[..], &[0xff, 0xfe, 0x00]);
    runtime.shutdown().await.unwrap();
}

/// What a consumer held unacknowledged when it died goes to another member of its group.
pub async fn redelivers_what_a_dropped_consumer_held(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("crash");
    let group = s.group("crash");
    let started = Log::default();
    // This instance takes messages and never finishes them, then dies.
    let stuck = HandlerSpec::new("stuck", [topic.clone()], {
        let started = started.clone();
        move |inv: Invocation| {
            started.push(inv.message);
            std::future::pending::<Result<(), HandlerError>>()
        }
    })
    .group(&group);
    let doomed = s
        .start_with(vec![stuck], |b| {
            b.concurrency(1).shutdown_timeout(Duration::from_millis(50))
        })
        .await;
    let producer = s.producer().await;
    for i in 0..5 {
        producer.send(&topic, &json!({"i": i})).await.unwrap();
    }
    eventually("the doomed instance took a message", || !started.is_empty()).await;
    doomed.shutdown().await.unwrap(); // times out and aborts: nothing was acknowledged

    let log = Log::default();
    let survivor = s
        .start(vec![
            recorder("survivor", &topic, log.clone()).group(&group),
        ])
        .await;
    eventually("all 5 messages handled by the survivor", || {
        log.all()
            .iter()
            .map(|m| m.payload.clone())
            .collect::<HashSet<_>>()
            .len()
            == 5
    })
    .await;
    survivor.shutdown().await.unwrap();
}

/// Shutdown lets the running handler finish and acknowledges its message.
pub async fn graceful_shutdown_finishes_in_flight_work(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("slow");
    let (started, finished) = (Log::default(), Log::default());
    let slow = || {
        let (started, finished) = (started.clone(), finished.clone());
        HandlerSpec::new("slow", [topic.clone()], move |inv: Invocation| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.push(());
                // The in-flight work shutdown must wait for, not a wait.
                tokio::time::sleep(Duration::from_millis(500)).await;
                finished.push(inv.message);
                Ok(())
            }
        })
    };
    let runtime = s.start(vec![slow()]).await;
    let producer = s.producer().await;
    producer.send(&topic, &json!({"slow": true})).await.unwrap();
    eventually("the handler started", || !started.is_empty()).await;
    runtime.shutdown().await.unwrap();
    assert_eq!(
        finished.len(),
        1,
        "shutdown waited for the in-flight handler"
    );

    let runtime = s.start(vec![slow()]).await;
    producer
        .send(&topic, &json!({"marker": true}))
        .await
        .unwrap();
    eventually("the marker", || finished.len() >= 2).await;
    // A redelivered message would also take the handler's 500 ms.
    watch_for_redelivery(|| finished.len() == 2).await;
    assert_eq!(
        finished.len(),
        2,
        "the finished message was redelivered: it was not acknowledged"
    );
    runtime.shutdown().await.unwrap();
}

/// The DLQ records of `topic` that `dlq list` shows now.
async fn listed(broker: &dyn Broker, dlq_topic: &str) -> Vec<DeadLetterRecord> {
    broker
        .browse(dlq_topic, 1_000)
        .await
        .expect("the DLQ can be browsed")
        .iter()
        .filter_map(|m| DeadLetterRecord::from_bytes(&m.payload).ok())
        .collect()
}

/// `dlq replay` while the consumer runs and its handler still fails (issue 21): it ends
/// within 10 s having published each of the 10 records once, the 10 come back as new records
/// with a replay count of 1 and their first failure kept, and a truncated record that cannot
/// be replayed stays listed.
pub async fn replay_ends_while_the_handler_still_fails(connect: Connect) {
    use messaging_core::replay::{ReplayOptions, replay};
    let s = Scenario::new(connect);
    let topic = s.topic("orders");
    let dlq_topic = format!("{topic}.dlq");
    let calls = Log::default();
    let failing = HandlerSpec::new("still_fails", [topic.clone()], {
        let calls = calls.clone();
        move |inv: Invocation| {
            calls.push(inv.message.header("x-messaging-replayed").is_some());
            async move { Err::<(), _>(HandlerError::retryable("provider down")) }
        }
    })
    .group(s.group("orders"))
    .retry(RetryPolicy::new(0, Duration::from_millis(10)));
    let runtime = s.start(vec![failing]).await;
    let broker = s.broker().await;
    let producer = s.producer().await;
    for i in 0..10 {
        producer
            .send_with(
                &topic,
                &json!({"order": i}),
                SendOptions::key(format!("k{i}")),
            )
            .await
            .unwrap();
    }
    // A truncated record (its body was too large), as the runtime writes one.
    let big = Message::new(topic.as_str(), vec![b'x'; 4_000]);
    let now = chrono::Utc::now();
    let truncated = DeadLetterRecord {
        version: 1,
        original: messaging_core::dlq::OriginalMessage::capture(&big),
        error: messaging_core::dlq::RecordedError {
            kind: FailureKind::TooLarge,
            message: "too large".into(),
        },
        attempts: 1,
        first_failure_at: now,
        last_failure_at: now,
        handler: "still_fails".into(),
        group: s.group("orders"),
        event_name: None,
        source: "conformance".into(),
        trace_id: None,
        dead_lettered_at: now,
        id: Some("truncated-1".into()),
        replays: 0,
        first_error: None,
    };
    broker
        .publish(truncated.to_message_within(&dlq_topic, 1_500))
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while listed(&*broker, &dlq_topic).await.len() < 11 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for 11 DLQ records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let options = ReplayOptions::new(&topic, &dlq_topic);
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(10), replay(&*broker, &options))
        .await
        .expect("replay ends within 10 s while the handler still fails")
        .expect("replay works");
    assert_eq!(report.replayed, 10, "{report}");
    assert_eq!(
        report.kept.len(),
        1,
        "the truncated record is kept: {report}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The handler fails again: each replayed message comes back once, replay count 1.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let records = listed(&*broker, &dlq_topic).await;
        let replayed: Vec<_> = records.iter().filter(|r| r.replays == 1).collect();
        if replayed.len() == 10 {
            assert_eq!(records.len(), 11, "10 records back, the truncated one kept");
            assert!(records.iter().any(|r| r.original.truncated));
            for r in replayed {
                let first = r.first_error.as_ref().expect("the first failure is kept");
                assert_eq!(first.message, "provider down");
                assert!(r.first_failure_at <= r.last_failure_at);
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for 10 replayed records; listed: {:?}",
            records
                .iter()
                .map(|r| (r.replays, r.original.truncated))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replayed_calls = calls.all().into_iter().filter(|replayed| *replayed).count();
    assert_eq!(replayed_calls, 10, "each record was published once");

    // A second replay takes only what waits now; a dry run changes nothing.
    let dry = replay(
        &*broker,
        &ReplayOptions {
            dry_run: true,
            ..options.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.replayed, 10);
    assert_eq!(listed(&*broker, &dlq_topic).await.len(), 11);
    runtime.shutdown().await.unwrap();
}

/// One key failing every attempt holds back only its own messages (issue 22): 2 000
/// messages on 50 keys, key `k0` failing with 3 retries 5 s apart. Every message of the other
/// 49 keys is handled within 2 s of its publish, and `k0`'s messages reach the DLQ in order.
/// (Draining all of `k0` takes 40 × 15 s; the test checks the order of the first two.)
pub async fn a_failing_key_holds_back_only_itself(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("keyed");
    let started = Instant::now();
    let handled: Log<(String, u64, Duration)> = Log::default();
    let failing_attempts: Log<u64> = Log::default();
    let dlq = Log::default();
    let handler = HandlerSpec::new("keyed", [topic.clone()], {
        let (handled, failing_attempts) = (handled.clone(), failing_attempts.clone());
        move |inv: Invocation| {
            let body: serde_json::Value = serde_json::from_slice(&inv.message.payload).unwrap();
            let seq = body["seq"].as_u64().unwrap();
            let sent = Duration::from_micros(body["at"].as_u64().unwrap());
            let key = inv.message.key_str().unwrap_or_default().to_owned();
            let result = if key == "k0" {
                failing_attempts.push(seq);
                Err(HandlerError::retryable("k0 always fails"))
            } else {
                handled.push((key, seq, started.elapsed().saturating_sub(sent)));
                Ok(())
            };
            async move { result }
        }
    })
    .group(s.group("keyed"))
    .retry(RetryPolicy::new(3, Duration::from_secs(5)));
    let runtime = s
        .start(vec![handler, dlq_reader(&s, &topic, dlq.clone())])
        .await;
    let producer = s.producer().await;
    for seq in 0..2_000u64 {
        let key = format!("k{}", seq % 50);
        let at = started.elapsed().as_micros() as u64;
        producer
            .send_with(
                &topic,
                &json!({"seq": seq, "at": at}),
                SendOptions::key(key),
            )
            .await
            .unwrap();
    }
    eventually("the 49 healthy keys handled", || handled.len() == 1_960).await;
    let slowest = handled
        .all()
        .into_iter()
        .max_by_key(|(_, _, d)| *d)
        .unwrap();
    assert!(
        slowest.2 < Duration::from_secs(2),
        "a message of another key waited {:?} (key {}, seq {})",
        slowest.2,
        slowest.0,
        slowest.1
    );
    // Per key, in publish order.
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, seq, _) in handled.all() {
        if let Some(previous) = last.insert(key.clone(), seq) {
            assert!(seq > previous, "key {key}: {seq} after {previous}");
        }
    }
    eventually("two of k0's messages dead-lettered", || dlq.len() >= 2).await;
    let order: Vec<u64> = dlq
        .all()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.original.payload).unwrap();
            body["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(&order[..2], &[0, 50], "k0's messages in order into the DLQ");
    // k0 never ran two messages at once, nor one before the previous was done with.
    let attempts = failing_attempts.all();
    assert!(attempts.windows(2).all(|w| w[0] <= w[1]), "{attempts:?}");
    runtime.shutdown().await.unwrap();
}

/// `retry_topics` (issue 22): a failed message moves to `<topic>.retry.<attempt>` with its due
/// time and is acknowledged, so that the next message of its key goes on at once; it is
/// retried when due, and what still fails reaches the DLQ under its original topic.
pub async fn retry_topics_let_the_key_go_on(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("payments");
    let seen: Log<(String, u32, bool)> = Log::default();
    let dlq = Log::default();
    let handler = HandlerSpec::new("flaky", [topic.clone()], {
        let seen = seen.clone();
        move |inv: Invocation| {
            let body = String::from_utf8_lossy(&inv.message.payload).into_owned();
            let delayed = inv.message.header("x-retry-due").is_some();
            seen.push((body.clone(), inv.attempt, delayed));
            let result = match body.as_str() {
                // Fails once, then succeeds from its retry topic.
                "\"first\"" if inv.attempt == 1 => Err(HandlerError::retryable("not yet")),
                "\"doomed\"" => Err(HandlerError::retryable("never")),
                _ => Ok(()),
            };
            async move { result }
        }
    })
    .group(s.group("payments"))
    .retry(RetryPolicy::new(2, Duration::from_millis(500)))
    .retry_topics(true);
    let runtime = s
        .start(vec![handler, dlq_reader(&s, &topic, dlq.clone())])
        .await;
    let producer = s.producer().await;
    for body in ["first", "second", "doomed"] {
        producer
            .send_with(&topic, &body, SendOptions::key("same-key"))
            .await
            .unwrap();
    }
    eventually("first handled on its retry", || {
        seen.all()
            .iter()
            .any(|(b, a, d)| b == "\"first\"" && *a == 2 && *d)
    })
    .await;
    eventually("doomed dead-lettered", || !dlq.is_empty()).await;
    let seen = seen.all();
    let at = |body: &str, attempt: u32| {
        seen.iter()
            .position(|(b, a, _)| b == body && *a == attempt)
            .unwrap_or_else(|| panic!("{body} attempt {attempt} not seen: {seen:?}"))
    };
    // The key went on while `first` waited for its retry.
    assert!(at("\"second\"", 1) < at("\"first\"", 2), "{seen:?}");
    let record = &dlq.all()[0];
    assert_eq!(
        record.original.topic, topic,
        "the DLQ names the original topic"
    );
    assert_eq!(record.attempts, 3);
    assert_eq!(record.original.payload, "\"doomed\"");
    assert!(record.original.headers.get("x-retry-due").is_some());
    let replay = record.to_replay().unwrap();
    assert_eq!(replay.topic, topic);
    assert!(replay.headers.get("x-retry-due").is_none());
    runtime.shutdown().await.unwrap();
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Question {
    asker: String,
    n: u32,
}

/// A handler that answers each [`Question`] with itself, or fails for good on `n == 0`.
fn answerer(topic: &str) -> HandlerSpec {
    HandlerSpec::new("answerer", [topic], |inv: Invocation| async move {
        let question: Question = decode_json(&inv.message)?;
        if question.n == 0 {
            return Err(HandlerError::permanent("zero is not a question"));
        }
        let responder =
            Responder::of(&inv).ok_or_else(|| HandlerError::permanent("no reply-to"))?;
        responder.value(question).await
    })
}

/// Request-reply: two requesting instances at once each get exactly their own replies; a
/// request nobody answers times out; a failing responder's error arrives before the timeout.
pub async fn request_reply_reaches_each_requesting_instance(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("questions");
    let unanswered = s.topic("unanswered");
    s.broker()
        .await
        .declare_topics(&[topic.clone(), unanswered.clone()])
        .await
        .unwrap();
    let runtime = s.start(vec![answerer(&topic)]).await;
    let instances = [s.producer().await, s.producer().await];
    let asks = instances.iter().enumerate().flat_map(|(i, producer)| {
        let topic = &topic;
        (1..=30).map(move |n| async move {
            let question = Question {
                asker: format!("instance-{i}"),
                n,
            };
            let answer: Question = producer
                .request(topic, &question)
                .timeout(PATIENCE)
                .await
                .unwrap_or_else(|e| panic!("request {n} of instance {i}: {e}"));
            assert_eq!(answer, question, "each instance gets its own replies");
        })
    });
    futures::future::join_all(asks).await;

    let started = Instant::now();
    let error = instances[0]
        .request::<Question, _>(
            &topic,
            &Question {
                asker: "x".into(),
                n: 0,
            },
        )
        .timeout(PATIENCE)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RequestError::Remote { message, .. } if message.contains("zero is not a question")),
        "the responder's error: {error:?}"
    );
    assert!(started.elapsed() < PATIENCE / 2, "before the timeout");

    let error = instances[1]
        .request::<Question, _>(
            &unanswered,
            &Question {
                asker: "y".into(),
                n: 1,
            },
        )
        .timeout(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "nobody answers: {error:?}");
    runtime.shutdown().await.unwrap();
}

/// A streamed reply of 100 chunks arrives whole and in order.
pub async fn streamed_replies_arrive_in_order(connect: Connect) {
    let s = Scenario::new(connect);
    let topic = s.topic("counting");
    s.broker()
        .await
        .declare_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    let counter = HandlerSpec::new("counter", [topic.as_str()], |inv: Invocation| async move {
        let n: u32 = decode_json(&inv.message)?;
        let responder =
            Responder::of(&inv).ok_or_else(|| HandlerError::permanent("no reply-to"))?;
        responder
            .stream(ReplyStream::new(futures::stream::iter(0..n)))
            .await
    });
    let runtime = s.start(vec![counter]).await;
    let producer = s.producer().await;
    let chunks = producer
        .request_stream::<u32, _>(&topic, &100u32)
        .timeout(PATIENCE)
        .await
        .unwrap();
    let got: Vec<u32> = futures::StreamExt::collect::<Vec<_>>(chunks)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    runtime.shutdown().await.unwrap();
}
