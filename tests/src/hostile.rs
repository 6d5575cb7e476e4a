//! Hostile input (issue 7): messages written by another program with the broker's own client,
//! not through our producer. Each ends as a dead-letter record of the right kind or as an
//! acknowledged, counted skip; the good messages sent between them, on the same key and so
//! in the same lane, are all handled exactly once and in order: a poison message never stops
//! a consumer.
//!
//! A broker's test file gives its connect function, a raw sender and its limits:
//!
//! ```ignore
//! messaging_tests::hostile_suite!(connect, raw_sender, Limits::TEN_MEGABYTES);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use messaging_core::message::header;
use messaging_core::metrics::metrics;
use messaging_core::{
    BoxFuture, Config, DeadLetterRecord, EnvelopeFields, Event, FailureKind, FromContext as _,
    HandlerSpec, Invocation, Message, Metadata, RetryPolicy, Runtime, decode_event, decode_json,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Connect, Log, Scenario};

/// How long to wait for something that should happen.
const PATIENCE: Duration = Duration::from_secs(90);

/// Header every message of these tests carries, naming its case; DLQ records keep it.
const CASE: &str = "x-hostile-case";

/// One message as another program writes it: any bytes, header values that need not be text.
#[derive(Clone, Debug)]
pub struct RawMessage {
    /// Topic (Kafka topic, AMQP routing key, Redis stream).
    pub topic: String,
    /// The key, any bytes; on RabbitMQ and Redis it travels where the framework looks for
    /// it (`x-message-key`).
    pub key: Option<Vec<u8>>,
    /// The body.
    pub payload: Vec<u8>,
    /// Headers with raw byte values.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Sends [`RawMessage`]s with a broker's own client. `send` returns once the broker has
/// acknowledged the message and panics when it could not.
pub trait RawSend: Send + Sync {
    /// Sends one message.
    fn send(&self, message: RawMessage) -> BoxFuture<'_, ()>;
}

/// What a broker's test file provides to make a raw sender.
pub type ConnectRaw = fn() -> BoxFuture<'static, Box<dyn RawSend>>;

/// Sizes a broker can carry.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The body of the `too_large` case.
    pub large_body: usize,
    /// The runtime's `max_message_size`; `None` keeps the default (1 MiB).
    pub max_message_size: Option<usize>,
    /// The length of the huge header value.
    pub huge_header: usize,
}

impl Limits {
    /// A 10 MB body against the default 1 MiB limit, a 100 kB header value (RabbitMQ's
    /// content header must fit in one 128 KiB frame).
    pub const TEN_MEGABYTES: Self = Self {
        large_body: 10 * 1024 * 1024,
        max_message_size: None,
        huge_header: 100_000,
    };
}

/// Expands to one `#[tokio::test]` per hostile-input test, each calling the shared body with
/// the broker's connect function, its raw sender and its limits.
#[macro_export]
macro_rules! hostile_suite {
    ($connect:path, $raw:path, $limits:expr) => {
        $crate::hostile_suite!(@each $connect, $raw, $limits;
            typed_handler_dead_letters_hostile_bodies,
            event_consumer_skips_or_dead_letters_hostile_events,
            garbage_headers_never_stop_good_messages,
            binary_keys_and_headers_survive_the_dlq_and_replay,
        );
    };
    (@each $connect:path, $raw:path, $limits:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::hostile::$name($connect, $raw, $limits).await
            }
        )*
    };
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    order_id: u64,
    total: f64,
}

/// What a handler saw of a good message.
#[derive(Clone, Debug)]
struct Seen {
    order_id: u64,
    attempt: u32,
    message: Arc<Message>,
}

/// Where a hostile message must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// A DLQ record of this kind after this many attempts in all.
    Dlq(FailureKind, u32),
    /// Acknowledged and counted under this reason.
    Skipped(&'static str),
}

/// One message of a run: a good one (handled, its order id recorded) or a hostile case.
struct Step {
    case: String,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    end: Option<End>,
    good: Option<u64>,
}

fn good_order(id: u64) -> Vec<u8> {
    serde_json::to_vec(&Order {
        order_id: id,
        total: 1.5,
    })
    .unwrap()
}

fn event_body(name: &str, data: serde_json::Value) -> serde_json::Value {
    serde_json::to_value(Event::new(name, data, "hostile-sender")).unwrap()
}

fn good_event(id: u64) -> Vec<u8> {
    serde_json::to_vec(&event_body(
        "order.created",
        json!({"order_id": id, "total": 1.5}),
    ))
    .unwrap()
}

fn name_header(name: &[u8]) -> (String, Vec<u8>) {
    (header::EVENT_NAME.to_owned(), name.to_vec())
}

fn attempt_header(value: &str) -> (String, Vec<u8>) {
    (header::ATTEMPT.to_owned(), value.as_bytes().to_vec())
}

/// Builds the message list: a good message before every hostile one and one after the last.
struct Plan {
    steps: Vec<Step>,
    next_good: u64,
    good: fn(u64) -> Vec<u8>,
    good_headers: Vec<(String, Vec<u8>)>,
}

impl Plan {
    fn new(good: fn(u64) -> Vec<u8>, good_headers: Vec<(String, Vec<u8>)>) -> Self {
        Self {
            steps: Vec::new(),
            next_good: 0,
            good,
            good_headers,
        }
    }

    fn push_good(&mut self, headers: Vec<(String, Vec<u8>)>) -> u64 {
        let id = self.next_good;
        self.next_good += 1;
        let mut all = self.good_headers.clone();
        all.extend(headers);
        self.steps.push(Step {
            case: format!("good-{id}"),
            payload: (self.good)(id),
            headers: all,
            end: None,
            good: Some(id),
        });
        id
    }

    fn hostile(&mut self, case: &str, payload: Vec<u8>, headers: Vec<(String, Vec<u8>)>, end: End) {
        self.push_good(Vec::new());
        self.steps.push(Step {
            case: case.to_owned(),
            payload,
            headers,
            end: Some(end),
            good: None,
        });
    }

    fn finish(mut self) -> Vec<Step> {
        self.push_good(Vec::new());
        self.steps
    }
}

/// Sends every step with the raw client on `topic`, all with one key (one lane, one partition).
async fn send_all(raw: &dyn RawSend, topic: &str, steps: &[Step]) {
    for step in steps {
        let mut headers = vec![(CASE.to_owned(), step.case.clone().into_bytes())];
        headers.extend(step.headers.iter().cloned());
        raw.send(RawMessage {
            topic: topic.to_owned(),
            key: Some(b"one-lane".to_vec()),
            payload: step.payload.clone(),
            headers,
        })
        .await;
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The DLQ records of `topic`, by case, read without consuming them.
async fn dlq_records(runtime: &Runtime, topic: &str) -> BTreeMap<String, Vec<DeadLetterRecord>> {
    let messages = runtime
        .broker()
        .browse(&format!("{topic}.dlq"), 1000)
        .await
        .expect("the DLQ topic can be browsed");
    let mut by_case: BTreeMap<String, Vec<DeadLetterRecord>> = BTreeMap::new();
    for m in messages {
        let record = DeadLetterRecord::from_bytes(&m.payload).expect("a DLQ record");
        let case = record
            .original
            .headers
            .get(CASE)
            .map(str::to_owned)
            .unwrap_or_default();
        by_case.entry(case).or_default().push(record);
    }
    by_case
}

/// Waits until every good message was handled and every hostile one reached its end, lets
/// redeliveries (which there must not be) show up, then checks each message's fate.
async fn check_fates(
    runtime: &Runtime,
    topic: &str,
    steps: &[Step],
    seen: &Log<Seen>,
) -> BTreeMap<String, DeadLetterRecord> {
    let goods: Vec<u64> = steps.iter().filter_map(|s| s.good).collect();
    let dlq_cases: Vec<&Step> = steps
        .iter()
        .filter(|s| matches!(s.end, Some(End::Dlq(..))))
        .collect();
    let mut skips: BTreeMap<&str, u64> = BTreeMap::new();
    for s in steps {
        if let Some(End::Skipped(reason)) = s.end {
            *skips.entry(reason).or_default() += 1;
        }
    }
    wait_for("every good message, DLQ record and skip", async || {
        let skipped = skips
            .iter()
            .all(|(reason, n)| metrics().skipped(topic, reason) >= *n);
        seen.len() >= goods.len()
            && skipped
            && dlq_records(runtime, topic).await.len() >= dlq_cases.len()
    })
    .await;
    // Anything redelivered or handled twice would show up within the redelivery window.
    crate::watch_for_redelivery(|| {
        seen.len() == goods.len()
            && skips
                .iter()
                .all(|(reason, n)| metrics().skipped(topic, reason) == *n)
    })
    .await;

    let handled: Vec<u64> = seen.all().iter().map(|s| s.order_id).collect();
    assert_eq!(
        handled, goods,
        "every good message handled exactly once, in order"
    );
    for (reason, n) in &skips {
        assert_eq!(
            metrics().skipped(topic, reason),
            *n,
            "messages skipped as `{reason}` (acknowledged once, never redelivered)"
        );
    }
    let records = dlq_records(runtime, topic).await;
    let expected: HashSet<&str> = dlq_cases.iter().map(|s| s.case.as_str()).collect();
    let got: HashSet<&str> = records.keys().map(String::as_str).collect();
    assert_eq!(got, expected, "the cases that reached the DLQ");
    let mut one_each = BTreeMap::new();
    for step in dlq_cases {
        let Some(End::Dlq(kind, attempts)) = step.end else {
            unreachable!()
        };
        let mut list = records[&step.case].clone();
        assert_eq!(list.len(), 1, "{}: one DLQ record", step.case);
        let record = list.remove(0);
        assert_eq!(
            (record.error.kind, record.attempts),
            (kind, attempts),
            "{}: kind and attempts ({})",
            step.case,
            record.error.message
        );
        assert_eq!(record.original.topic, topic, "{}: topic", step.case);
        assert_eq!(
            record.original.key.as_deref(),
            Some("one-lane"),
            "{}: key",
            step.case
        );
        let kept = record.original.payload_bytes().unwrap();
        if record.original.truncated {
            // Records are capped in size (a record the broker refuses would stall the lane):
            // an oversized body keeps its start and its full length.
            assert_eq!(
                record.original.size,
                Some(step.payload.len()),
                "{}: size",
                step.case
            );
            assert!(
                !kept.is_empty() && step.payload.starts_with(&kept),
                "{}: the start of the body is kept",
                step.case
            );
        } else {
            assert_eq!(
                kept, step.payload,
                "{}: the body is kept byte for byte",
                step.case
            );
        }
        one_each.insert(step.case.clone(), record);
    }
    one_each
}

fn config(limits: Limits) -> Config {
    let mut config = Config::default().with_source("hostile");
    if let Some(max) = limits.max_message_size {
        config.max_message_size = max;
    }
    config
}

async fn start(scenario: &Scenario, limits: Limits, handler: HandlerSpec) -> Runtime {
    scenario
        .start_with(vec![handler], |b| b.config(config(limits)))
        .await
}

/// A `#[message_handler(schema = Order)]`-like handler: the whole body decoded as `Order`.
/// Its group is the scenario's, so concurrent runs on one broker never share a queue.
fn typed_handler(scenario: &Scenario, topic: &str, seen: Log<Seen>) -> HandlerSpec {
    HandlerSpec::new("typed", [topic], move |inv: Invocation| {
        let seen = seen.clone();
        async move {
            let order: Order = decode_json(&inv.message)?;
            let attempt = Metadata::from_context(&inv)?.attempt;
            seen.push(Seen {
                order_id: order.order_id,
                attempt,
                message: inv.message,
            });
            Ok(())
        }
    })
    .group(scenario.group("typed"))
    .retry(RetryPolicy::new(2, Duration::from_millis(10)))
}

/// Malformed JSON, JSON of the wrong shape, invalid UTF-8, an empty body and an oversized one
/// reach a typed handler: each is dead-lettered at once with its kind, nothing is retried.
pub async fn typed_handler_dead_letters_hostile_bodies(
    connect: Connect,
    raw: ConnectRaw,
    limits: Limits,
) {
    let s = Scenario::new(connect);
    let topic = s.topic("typed");
    let seen = Log::default();
    let runtime = start(&s, limits, typed_handler(&s, &topic, seen.clone())).await;
    let sender = raw().await;

    let mut plan = Plan::new(good_order, Vec::new());
    let decode = End::Dlq(FailureKind::Decode, 1);
    let schema = End::Dlq(FailureKind::Schema, 1);
    plan.hostile(
        "malformed-json",
        br#"{"order_id": 7, "total":"#.to_vec(),
        vec![],
        decode,
    );
    plan.hostile(
        "wrong-shape",
        br#"{"order_id":"seven","total":[1]}"#.to_vec(),
        vec![],
        schema,
    );
    plan.hostile(
        "json-array",
        br#"[{"order_id":7,"total":1.5}]"#.to_vec(),
        vec![],
        schema,
    );
    plan.hostile(
        "invalid-utf8",
        b"{\"order_id\":7,\"total\":\xff\xfe}".to_vec(),
        vec![],
        decode,
    );
    plan.hostile("empty-body", Vec::new(), vec![], decode);
    // Valid JSON of the right shape: only its size sends it to the DLQ.
    let mut large = br#"{"order_id":7,"total":1.5,"padding":""#.to_vec();
    large.resize(limits.large_body - 2, b'x');
    large.extend_from_slice(b"\"}");
    plan.hostile(
        "too-large",
        large,
        vec![],
        End::Dlq(FailureKind::TooLarge, 1),
    );
    let steps = plan.finish();
    send_all(&*sender, &topic, &steps).await;

    let records = check_fates(&runtime, &topic, &steps, &seen).await;
    assert_eq!(
        records["invalid-utf8"].original.encoding.as_deref(),
        Some("base64"),
        "a body that is not UTF-8 is kept in base64"
    );
    assert!(
        records["too-large"]
            .error
            .message
            .contains(&limits.large_body.to_string()),
        "{}",
        records["too-large"].error.message
    );
    let attempts: u64 = runtime
        .handler_metrics("typed")
        .iter()
        .map(|m| m.attempts())
        .sum();
    // One call per message; the oversized one never reaches the handler.
    let calls = steps
        .iter()
        .filter(|s| s.end != Some(End::Dlq(FailureKind::TooLarge, 1)))
        .count() as u64;
    assert_eq!(attempts, calls, "handler calls: no bad payload was retried");
    runtime.shutdown().await.unwrap();
}

/// A `#[consumer]` with `#[on_event("order.created")]` gets unknown names, bodies with no name,
/// envelopes missing a field, names that are not UTF-8 and data of the wrong shape.
pub async fn event_consumer_skips_or_dead_letters_hostile_events(
    connect: Connect,
    raw: ConnectRaw,
    limits: Limits,
) {
    let s = Scenario::new(connect);
    let topic = s.topic("events");
    let seen: Log<Seen> = Log::default();
    let consumer = HandlerSpec::new("OrderEvents::on_created", [topic.clone()], {
        let seen = seen.clone();
        move |inv: Invocation| {
            let seen = seen.clone();
            async move {
                let event: Event<Order> = decode_event(&inv.message, &EnvelopeFields::STANDARD)?;
                let attempt = Metadata::from_context(&inv)?.attempt;
                seen.push(Seen {
                    order_id: event.data.order_id,
                    attempt,
                    message: inv.message,
                });
                Ok(())
            }
        }
    })
    .on_event("order.created")
    .group(s.group("order-events"))
    .retry(RetryPolicy::new(2, Duration::from_millis(10)));
    let runtime = start(&s, limits, consumer).await;
    let sender = raw().await;

    let created = || vec![name_header(b"order.created")];
    let mut plan = Plan::new(good_event, created());
    let data = json!({"order_id": 7, "total": 1.5});
    plan.hostile(
        "unknown-name",
        serde_json::to_vec(&event_body("order.exploded", data.clone())).unwrap(),
        vec![name_header(b"order.exploded")],
        End::Skipped("unknown_event"),
    );
    plan.hostile(
        "unknown-name-in-body-only",
        serde_json::to_vec(&event_body("order.exploded", data.clone())).unwrap(),
        vec![],
        End::Skipped("unknown_event"),
    );
    plan.hostile(
        "non-utf8-name-header",
        serde_json::to_vec(&event_body("order.created", data.clone())).unwrap(),
        vec![name_header(b"order.\xffcreated")],
        End::Skipped("unknown_event"),
    );
    let mut nameless = event_body("order.created", data.clone());
    nameless.as_object_mut().unwrap().remove("name");
    plan.hostile(
        "no-name-anywhere",
        serde_json::to_vec(&nameless).unwrap(),
        vec![],
        End::Skipped("no_event_name"),
    );
    plan.hostile(
        "malformed-json-no-header",
        br#"{"name":"order.created","data":{"#.to_vec(),
        vec![],
        End::Skipped("no_event_name"),
    );
    let mut no_id = event_body("order.created", data.clone());
    no_id.as_object_mut().unwrap().remove("id");
    plan.hostile(
        "missing-envelope-field",
        serde_json::to_vec(&no_id).unwrap(),
        created(),
        End::Dlq(FailureKind::Decode, 1),
    );
    plan.hostile(
        "not-an-envelope",
        br#"{"order_id":7,"total":1.5}"#.to_vec(),
        created(),
        End::Dlq(FailureKind::Decode, 1),
    );
    plan.hostile(
        "wrong-data-shape",
        serde_json::to_vec(&event_body("order.created", json!({"order_id": "seven"}))).unwrap(),
        created(),
        End::Dlq(FailureKind::Schema, 1),
    );
    plan.hostile(
        "malformed-json-with-header",
        br#"{"name":"order.created","data":{"#.to_vec(),
        created(),
        End::Dlq(FailureKind::Decode, 1),
    );
    plan.hostile(
        "invalid-utf8-with-header",
        b"\xff\xfe\x00".to_vec(),
        created(),
        End::Dlq(FailureKind::Decode, 1),
    );
    plan.hostile(
        "empty-body-with-header",
        Vec::new(),
        created(),
        End::Dlq(FailureKind::Decode, 1),
    );
    let steps = plan.finish();
    send_all(&*sender, &topic, &steps).await;

    let records = check_fates(&runtime, &topic, &steps, &seen).await;
    for record in records.values() {
        assert_eq!(record.handler, "OrderEvents::on_created");
        assert_eq!(record.group, s.group("order-events"));
        assert_eq!(record.event_name.as_deref(), Some("order.created"));
    }
    runtime.shutdown().await.unwrap();
}

/// Good bodies with headers no framework wrote (bytes that are not UTF-8, a huge value, an
/// attempt count of "banana" or of the largest number) are handled; bad bodies with such an
/// attempt count are dead-lettered with the count read as documented.
pub async fn garbage_headers_never_stop_good_messages(
    connect: Connect,
    raw: ConnectRaw,
    limits: Limits,
) {
    let s = Scenario::new(connect);
    let topic = s.topic("headers");
    let seen = Log::default();
    let runtime = start(&s, limits, typed_handler(&s, &topic, seen.clone())).await;
    let sender = raw().await;

    let mut plan = Plan::new(good_order, Vec::new());
    let huge = "h".repeat(limits.huge_header);
    let binary = plan.push_good(vec![
        ("x-binary".to_owned(), vec![0x66, 0xff, 0x00, 0xfe, 0x6f]),
        attempt_header("banana"),
        name_header(b"\xc3\x28"),
    ]);
    let huge_id = plan.push_good(vec![("x-huge".to_owned(), huge.clone().into_bytes())]);
    let max_id = plan.push_good(vec![attempt_header(&u32::MAX.to_string())]);
    let negative = plan.push_good(vec![attempt_header("-1")]);
    let overflow = plan.push_good(vec![attempt_header("99999999999999999999")]);
    let padded = plan.push_good(vec![attempt_header(" 2 ")]);
    let bad = br#"{"order_id":"seven"}"#.to_vec();
    plan.hostile(
        "bad-body-banana-attempt",
        bad.clone(),
        vec![attempt_header("banana")],
        End::Dlq(FailureKind::Schema, 1),
    );
    plan.hostile(
        "bad-body-third-delivery",
        bad.clone(),
        vec![attempt_header("2")],
        End::Dlq(FailureKind::Schema, 3),
    );
    plan.hostile(
        "bad-body-largest-attempt",
        bad.clone(),
        vec![attempt_header(&u32::MAX.to_string())],
        End::Dlq(FailureKind::Schema, u32::MAX),
    );
    plan.hostile(
        "bad-body-binary-header",
        bad,
        vec![("x-binary".to_owned(), vec![0xff, 0xfe])],
        End::Dlq(FailureKind::Schema, 1),
    );
    let steps = plan.finish();
    send_all(&*sender, &topic, &steps).await;

    let records = check_fates(&runtime, &topic, &steps, &seen).await;
    let seen: BTreeMap<u64, Seen> = seen.all().into_iter().map(|s| (s.order_id, s)).collect();
    let m = &seen[&binary];
    assert_eq!(
        m.message.headers.get_bytes("x-binary"),
        Some(&[0x66, 0xff, 0x00, 0xfe, 0x6f][..]),
        "bytes that are not UTF-8 arrive exactly"
    );
    assert_eq!(m.message.header("x-binary"), None, "and are not text");
    assert_eq!(m.attempt, 1, "an attempt count of `banana` counts as none");
    assert_eq!(seen[&huge_id].message.header("x-huge"), Some(huge.as_str()));
    assert_eq!(seen[&negative].attempt, 1);
    assert_eq!(seen[&overflow].attempt, 1);
    assert_eq!(seen[&padded].attempt, 3);
    assert_eq!(
        seen[&max_id].attempt,
        u32::MAX,
        "the largest attempt count saturates instead of overflowing"
    );
    assert_eq!(
        records["bad-body-binary-header"]
            .original
            .headers
            .get_bytes("x-binary"),
        Some(&[0xff, 0xfe][..]),
        "the DLQ record keeps the header as delivered"
    );
    runtime.shutdown().await.unwrap();
}

/// Keys and header values that are not UTF-8, written by another program, reach the handler
/// byte for byte, are kept exactly in the DLQ record (base64 there), and `dlq replay` puts
/// them back as they were: on Kafka, on the partition the original was on.
pub async fn binary_keys_and_headers_survive_the_dlq_and_replay(
    connect: Connect,
    raw: ConnectRaw,
    limits: Limits,
) {
    use messaging_core::Position;
    use messaging_core::replay::{ReplayOptions, replay};
    use std::sync::atomic::{AtomicBool, Ordering};

    let s = Scenario::new(connect);
    let topic = s.topic("binary");
    let dlq_topic = format!("{topic}.dlq");
    let failing = Arc::new(AtomicBool::new(true));
    let seen: Log<Arc<Message>> = Log::default();
    let handler = HandlerSpec::new("binary", [topic.as_str()], {
        let (failing, seen) = (failing.clone(), seen.clone());
        move |inv: Invocation| {
            seen.push(inv.message.clone());
            let fail = failing.load(Ordering::SeqCst);
            async move {
                match fail {
                    true => Err(messaging_core::HandlerError::permanent(
                        "refused until replay",
                    )),
                    false => Ok(()),
                }
            }
        }
    })
    .group(s.group("binary"))
    .retry(RetryPolicy::new(0, Duration::from_millis(10)));
    let runtime = start(&s, limits, handler).await;
    let sender = raw().await;

    // Keys of several lengths (a UUID's 16 bytes among them), none of them UTF-8.
    let keys: Vec<Vec<u8>> = (0u8..6)
        .map(|i| {
            let mut key = vec![0xff, 0x00, i];
            key.extend(std::iter::repeat_n(0x80 | i, usize::from(i) * 3));
            key
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        sender
            .send(RawMessage {
                topic: topic.clone(),
                key: Some(key.clone()),
                payload: format!("{{\"n\":{i}}}").into_bytes(),
                headers: vec![
                    (CASE.to_owned(), format!("binary-{i}").into_bytes()),
                    ("x-bin".to_owned(), vec![0xfe, i as u8]),
                ],
            })
            .await;
    }
    let case_of = |m: &Message| m.header(CASE).map(str::to_owned).unwrap_or_default();

    let mut records = BTreeMap::new();
    wait_for("a DLQ record for each binary-key message", async || {
        records = dlq_records(&runtime, &topic).await;
        records.len() >= keys.len()
    })
    .await;
    let first_seen: BTreeMap<String, Arc<Message>> =
        seen.all().into_iter().map(|m| (case_of(&m), m)).collect();
    let mut original_partitions = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        let case = format!("binary-{i}");
        let handled = &first_seen[&case];
        assert_eq!(
            handled.key.as_ref().map(|k| k.as_bytes()),
            Some(&key[..]),
            "{case}: key"
        );
        assert_eq!(handled.key_str(), None, "{case}: the key is not text");
        assert_eq!(
            handled.headers.get_bytes("x-bin"),
            Some(&[0xfe, i as u8][..])
        );
        let record = &records[&case][0];
        assert_eq!(
            record.original.key_encoding.as_deref(),
            Some("base64"),
            "{case}"
        );
        assert_eq!(
            record
                .original
                .key_bytes()
                .unwrap()
                .as_ref()
                .map(|k| k.as_bytes()),
            Some(&key[..]),
            "{case}: the record keeps the key exactly"
        );
        assert_eq!(
            record.original.headers.get_bytes("x-bin"),
            Some(&[0xfe, i as u8][..]),
            "{case}: the record keeps the header exactly"
        );
        if let Position::Partition { partition, .. } = handled.position {
            original_partitions.insert(case, partition);
        }
    }
    if !original_partitions.is_empty() {
        let distinct: HashSet<i32> = original_partitions.values().copied().collect();
        assert!(
            distinct.len() > 1,
            "the keys spread over partitions: {original_partitions:?}"
        );
    }

    failing.store(false, Ordering::SeqCst);
    let broker = s.broker().await;
    let report = replay(&*broker, &ReplayOptions::new(&topic, &dlq_topic))
        .await
        .expect("replay works");
    assert_eq!(report.replayed, keys.len(), "{report}");
    wait_for("every replayed message handled", async || {
        seen.all()
            .iter()
            .filter(|m| m.header("x-messaging-replayed").is_some())
            .count()
            >= keys.len()
    })
    .await;
    for m in seen
        .all()
        .iter()
        .filter(|m| m.header("x-messaging-replayed").is_some())
    {
        let case = case_of(m);
        let i: usize = case.trim_start_matches("binary-").parse().unwrap();
        assert_eq!(
            m.key.as_ref().map(|k| k.as_bytes()),
            Some(&keys[i][..]),
            "{case}: replayed key"
        );
        assert_eq!(m.headers.get_bytes("x-bin"), Some(&[0xfe, i as u8][..]));
        if let Position::Partition { partition, .. } = m.position {
            assert_eq!(
                Some(&partition),
                original_partitions.get(&case),
                "{case}: replayed onto the original's partition"
            );
        }
    }
    runtime.shutdown().await.unwrap();
}
