//! The macros register what their attributes say and the generated code calls the handlers:
//! payload decoding, extractors, `#[consumer]` dispatch by event name, foreign envelopes.
//! Retry timing, DLQ records and `#[event]` publishing are tested in their own files.
//!
//! Topics here start with `macros-test.` so that no other test binary's handlers overlap.

// A facade crate re-exporting messaging_core, as `crate = "facade"` expects.
extern crate messaging_core as facade;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use messaging_core::{Backoff, HandlerKind, HandlerSpec, registered_handlers};
use serde::{Deserialize, Serialize};

/// What the handlers saw, shared with the test through `State<Calls>`.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, call: String) {
        self.0.lock().unwrap().push(call);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
}

#[message_handler(
    topic = "macros-test.orders",
    group = "macros-test-orders",
    max_retries = 1,
    retry_delay = "250ms",
    backoff = "linear",
    max_delay = "2s",
    timeout = "5s",
    dlq = "macros-test.orders.parked",
    schema = Order
)]
async fn record_order(order: Order, calls: State<Calls>, meta: Metadata) -> anyhow::Result<()> {
    calls.push(format!(
        "order {} from {} attempt {}",
        order.id, meta.topic, meta.attempt
    ));
    Ok(())
}

/// Untyped payload, validated against a schema of another type.
#[message_handler(topic = "macros-test.validated", schema = Order)]
async fn record_validated(
    body: serde_json::Value,
    calls: State<Calls>,
) -> Result<(), HandlerError> {
    calls.push(format!("validated {body}"));
    Ok(())
}

/// Raw bytes on two topics, returning `()`.
#[message_handler(topic = ["macros-test.raw.a", "macros-test.raw.b"])]
async fn record_raw(body: Bytes, calls: State<Calls>) {
    calls.push(format!("raw {}", String::from_utf8_lossy(&body)));
}

/// Typed envelope in a free handler; `schema` checks the envelope's data.
#[message_handler(topic = "macros-test.enveloped", schema = Order)]
async fn record_enveloped(
    event: Event<serde_json::Value>,
    calls: State<Calls>,
) -> anyhow::Result<()> {
    calls.push(format!("{} {}", event.name, event.data["id"]));
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct Account {
    owner: String,
}

/// Declares its event name, so its handler needs no string.
#[derive(Debug, Serialize, Deserialize)]
struct AccountRenamed {
    owner: String,
}

impl TypedEvent for AccountRenamed {
    const NAME: &'static str = "account.renamed";
    const TOPIC: &'static str = "macros-test.accounts";
}

/// One instance serves every method: `opened` counts on it.
#[derive(Default)]
struct Accounts {
    opened: AtomicU32,
}

#[consumer(group = "macros-test-accounts", topics = ["macros-test.accounts"], max_retries = 0)]
impl Accounts {
    #[on_event("account.opened")]
    async fn opened(&self, event: Event<Account>, calls: State<Calls>) -> Result<(), HandlerError> {
        let n = self.opened.fetch_add(1, Ordering::SeqCst) + 1;
        calls.push(format!("opened {} #{n}", event.data.owner));
        Ok(())
    }

    /// Fails its first attempt, to show the error reaches the retry pipeline.
    #[on_event("account.closed", max_retries = 2, retry_delay = "100ms")]
    async fn closed(
        &self,
        event: Event<Account>,
        meta: Metadata,
        calls: State<Calls>,
    ) -> anyhow::Result<()> {
        calls.push(format!(
            "closed {} attempt {}",
            event.data.owner, meta.attempt
        ));
        anyhow::ensure!(meta.attempt > 1, "first attempt fails");
        Ok(())
    }

    /// The name comes from `AccountRenamed: TypedEvent`.
    #[on_event]
    async fn renamed(&self, event: Event<AccountRenamed>, calls: State<Calls>) {
        calls.push(format!("renamed {}", event.data.owner));
    }

    /// Not an event handler: left alone by `#[consumer]`.
    #[allow(dead_code)]
    fn describe(&self) -> String {
        format!("{} opened", self.opened.load(Ordering::SeqCst))
    }
}

#[derive(Debug, Deserialize)]
struct Beat {
    bpm: u32,
}

/// A foreign envelope: `{"type": …, "payload": …}`; group defaults to the type's name.
#[derive(Default)]
struct Beats;

#[consumer(
    topics = "macros-test.beats",
    name_field = "type",
    data_field = "payload"
)]
impl Beats {
    #[on_event("BEAT_CREATED")]
    async fn created(&self, event: Event<Beat>, calls: State<Calls>) {
        calls.push(format!("{} {}", event.name, event.data.bpm));
    }
}

#[message_handler(topic = "macros-test.retried", max_retries = 2, retry_topics = true)]
async fn retried_through_topics(_body: serde_json::Value) {}

/// A format of its own: a plain-text number, `21.5`.
#[derive(Debug)]
struct Celsius(f64);

impl messaging_core::FromMessage for Celsius {
    fn from_message(
        message: &messaging_core::Message,
        _: &messaging_core::EnvelopeFields,
    ) -> Result<Self, HandlerError> {
        let decode = |e: &dyn std::fmt::Display| {
            HandlerError::new(messaging_core::FailureKind::Decode, e.to_string())
        };
        let text = std::str::from_utf8(&message.payload).map_err(|e| decode(&e))?;
        text.trim()
            .parse()
            .map(Celsius)
            .map_err(|e: std::num::ParseFloatError| decode(&e))
    }
}

#[message_handler(topic = "macros-test.celsius")]
async fn record_celsius(reading: Celsius, calls: State<Calls>) {
    calls.push(format!("celsius {}", reading.0));
}

/// `Vec<u8>` is JSON like any other `Deserialize` type, not the raw body.
#[message_handler(topic = "macros-test.numbers")]
async fn record_numbers(numbers: Vec<u8>, calls: State<Calls>) {
    calls.push(format!("numbers {numbers:?}"));
}

/// The raw body and the whole message are `FromMessage` types.
#[message_handler(topic = "macros-test.numbers", group = "macros-test-numbers-raw")]
async fn record_numbers_raw(message: messaging_core::Message, calls: State<Calls>) {
    calls.push(format!(
        "message {} {}",
        message.topic.as_str(),
        String::from_utf8_lossy(&message.payload)
    ));
}

/// User types named like the framework's are decoded as what they are: JSON.
mod own_names {
    use super::Calls;
    use messaging_core::prelude::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Message {
        pub text: String,
    }

    #[derive(Deserialize)]
    pub struct Event {
        pub kind: String,
    }

    #[message_handler(topic = "macros-test.own-names")]
    async fn own_message(message: Message, calls: State<Calls>) {
        calls.push(format!("own message {}", message.text));
    }

    #[message_handler(topic = "macros-test.own-names", group = "macros-test-own-event")]
    async fn own_event(event: Event, calls: State<Calls>) {
        calls.push(format!("own event {}", event.kind));
    }
}

/// Topics from constants, in both macros.
const PRICES: &str = "macros-test.prices";
mod topics {
    pub const STOCK: &str = "macros-test.stock";
    pub const SHELVES: &str = "macros-test.shelves";
}

#[message_handler(topic = PRICES)]
async fn record_price(price: u32, calls: State<Calls>) {
    calls.push(format!("price {price}"));
}

#[message_handler(topic = [topics::STOCK, "macros-test.stock.extra"], retry(max = 4, delay = "2s", backoff = "exponential", max_delay = "1m", timeout = "3s"))]
async fn record_stock(stock: u32, calls: State<Calls>) {
    calls.push(format!("stock {stock}"));
}

#[derive(Default)]
struct Shelves;

#[consumer(topics = [topics::SHELVES, "macros-test.shelves.b"], retry(max = 2, delay = "300ms"))]
impl Shelves {
    #[on_event("shelf.filled", retry(backoff = "linear"))]
    async fn filled(&self, event: Event<u32>, calls: State<Calls>) {
        calls.push(format!("filled {}", event.data));
    }
}

/// Everything through the facade path.
#[facade::message_handler(topic = "macros-test.facade", crate = "facade")]
async fn through_facade(body: facade::Event<u32>, calls: facade::State<Calls>) {
    calls.push(format!("facade {}", body.data));
}

#[derive(Default)]
struct FacadeConsumer;

#[facade::consumer(topics = ["macros-test.facade"], crate = "facade")]
impl FacadeConsumer {
    #[on_event("facade.ping")]
    async fn ping(&self, event: facade::Event<u32>, calls: facade::State<Calls>) {
        calls.push(format!("facade consumer {}", event.data));
    }
}

#[derive(Serialize)]
struct Published {
    id: u64,
}

/// `#[event]` through the facade, on a constant topic (compiled, not called: publishing is
/// tested in event_macro.rs).
#[allow(dead_code)]
#[facade::event("price.published", topic = PRICES, key_field = "id", crate = "facade")]
async fn publish_price() -> anyhow::Result<Published> {
    Ok(Published { id: 1 })
}

fn handler(name: &str) -> HandlerSpec {
    registered_handlers()
        .into_iter()
        .find(|h| h.name() == name)
        .unwrap_or_else(|| panic!("`{name}` is not registered"))
}

async fn harness(calls: &Calls) -> TestHarness {
    TestHarness::builder()
        .state(calls.clone())
        .start()
        .await
        .expect("the harness starts")
}

#[test]
fn message_handler_registers_its_attribute_values() {
    let h = handler("record_order");
    assert_eq!(h.kind(), HandlerKind::MessageHandler);
    assert_eq!(h.topics(), ["macros-test.orders"]);
    assert_eq!(h.group_name(), "macros-test-orders");
    assert_eq!(h.event_name(), None);
    assert_eq!(h.schema(), Some("Order"));
    assert_eq!(
        h.dlq_topic("macros-test.orders"),
        "macros-test.orders.parked"
    );
    let retry = h.retry_policy();
    assert_eq!(retry.max_retries, 1);
    assert_eq!(retry.retry_delay, Duration::from_millis(250));
    assert_eq!(retry.backoff, Backoff::Linear);
    assert_eq!(retry.max_delay, Duration::from_secs(2));
    assert_eq!(retry.timeout, Some(Duration::from_secs(5)));
    assert!(
        h.qualified_name().ends_with("macros::record_order"),
        "{}",
        h.qualified_name()
    );
}

#[test]
fn retry_topics_registers_one_delay_topic_per_retry() {
    let h = handler("retried_through_topics");
    assert!(h.uses_retry_topics());
    assert_eq!(
        h.delay_topics("macros-test.retried"),
        ["macros-test.retried.retry.1", "macros-test.retried.retry.2"]
    );
    assert!(!handler("record_raw").uses_retry_topics());
    assert!(handler("record_raw").delay_topics("t").is_empty());
}

#[test]
fn unset_keys_take_the_core_defaults() {
    let h = handler("record_raw");
    assert_eq!(h.topics(), ["macros-test.raw.a", "macros-test.raw.b"]);
    // No `group`: the runtime uses the handler's name.
    assert_eq!(h.group_name(), "record_raw");
    assert_eq!(*h.retry_policy(), messaging_core::RetryPolicy::DEFAULT);
    assert_eq!(h.schema(), None);
    assert_eq!(h.dlq_topic("macros-test.raw.a"), "macros-test.raw.a.dlq");
}

#[test]
fn consumer_registers_one_handler_per_on_event_method() {
    let opened = handler("Accounts::opened");
    assert_eq!(opened.kind(), HandlerKind::OnEvent);
    assert_eq!(opened.event_name(), Some("account.opened"));
    assert_eq!(opened.group_name(), "macros-test-accounts");
    assert_eq!(opened.topics(), ["macros-test.accounts"]);
    // The consumer's default, and the method's own override.
    assert_eq!(opened.retry_policy().max_retries, 0);
    let closed = handler("Accounts::closed");
    assert_eq!(closed.event_name(), Some("account.closed"));
    assert_eq!(closed.retry_policy().max_retries, 2);
    assert_eq!(
        closed.retry_policy().retry_delay,
        Duration::from_millis(100)
    );
    let renamed = handler("Accounts::renamed");
    assert_eq!(renamed.event_name(), Some("account.renamed"));
    assert_eq!(renamed.group_name(), "macros-test-accounts");
    assert!(
        registered_handlers()
            .iter()
            .all(|h| h.name() != "Accounts::describe")
    );

    let beats = handler("Beats::created");
    assert_eq!(beats.group_name(), "Beats");
    assert_eq!(beats.topics(), ["macros-test.beats"]);
}

#[tokio::test(start_paused = true)]
async fn message_handler_decodes_the_payload_and_resolves_extractors() {
    let calls = Calls::default();
    let harness = harness(&calls).await;
    harness
        .send("macros-test.orders", &Order { id: 7 })
        .await
        .unwrap();
    harness.send("macros-test.raw.a", "first").await.unwrap();
    harness.send("macros-test.raw.b", "second").await.unwrap();
    harness.wait_idle().await;
    let mut seen = calls.take();
    seen.sort();
    assert_eq!(
        seen,
        [
            "order 7 from macros-test.orders attempt 1",
            "raw \"first\"",
            "raw \"second\"",
        ]
    );
    assert_eq!(harness.succeeded("record_order"), 1);
    assert_eq!(harness.succeeded("record_raw"), 2);
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn schema_and_event_payloads_are_decoded_by_the_generated_code() {
    let calls = Calls::default();
    let harness = harness(&calls).await;
    harness
        .send("macros-test.validated", &Order { id: 1 })
        .await
        .unwrap();
    // Not an `Order`: the schema check rejects it before the handler runs.
    harness
        .send("macros-test.validated", &serde_json::json!({"id": "x"}))
        .await
        .unwrap();
    harness
        .publish_event("order.placed", &Order { id: 2 }, "macros-test.enveloped")
        .await
        .unwrap();
    // An envelope whose data is not an `Order`.
    let not_an_order = serde_json::json!({"id": "three"});
    harness
        .publish_event("order.placed", &not_an_order, "macros-test.enveloped")
        .await
        .unwrap();
    harness.wait_idle().await;
    // Two groups, consumed concurrently: compare sorted.
    let mut seen = calls.take();
    seen.sort();
    assert_eq!(seen, ["order.placed 2", r#"validated {"id":1}"#]);
    let parked = harness.dlq("macros-test.validated");
    assert_eq!(parked.len(), 1, "the invalid body is dead-lettered");
    assert_eq!(parked[0].error.kind, messaging_core::FailureKind::Schema);
    assert_eq!(parked[0].handler, "record_validated");
    let parked = harness.dlq("macros-test.enveloped");
    assert_eq!(
        parked.len(),
        1,
        "the envelope with bad data is dead-lettered"
    );
    assert_eq!(parked[0].error.kind, messaging_core::FailureKind::Schema);
    assert_eq!(
        harness.attempts("record_validated"),
        2,
        "one attempt per message, no retry"
    );
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn consumer_dispatches_event_names_to_their_methods_on_one_instance() {
    let calls = Calls::default();
    let harness = harness(&calls).await;
    let alice = Account {
        owner: "alice".into(),
    };
    let bob = Account {
        owner: "bob".into(),
    };
    let topic = "macros-test.accounts";
    harness
        .publish_event("account.opened", &alice, topic)
        .await
        .unwrap();
    harness
        .publish_event("account.closed", &alice, topic)
        .await
        .unwrap();
    harness
        .publish_event("account.opened", &bob, topic)
        .await
        .unwrap();
    let carol = AccountRenamed {
        owner: "carol".into(),
    };
    harness
        .publish_event(AccountRenamed::NAME, &carol, topic)
        .await
        .unwrap();
    harness.wait_idle().await;
    assert_eq!(
        calls.take(),
        [
            "opened alice #1",
            "closed alice attempt 1",
            "closed alice attempt 2",
            "opened bob #2",
            "renamed carol",
        ]
    );
    assert_eq!(harness.attempts("Accounts::closed"), 2);
    assert_eq!(harness.succeeded("Accounts::closed"), 1);
    assert!(harness.dlq(topic).is_empty());
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn consumer_reads_a_foreign_envelope() {
    let calls = Calls::default();
    let harness = harness(&calls).await;
    let body = serde_json::json!({"type": "BEAT_CREATED", "payload": {"bpm": 120}});
    harness.send("macros-test.beats", &body).await.unwrap();
    harness.wait_idle().await;
    assert_eq!(calls.take(), ["BEAT_CREATED 120"]);
    harness.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_argument_type_chooses_the_decoder() {
    let calls = Calls::default();
    let harness = harness(&calls).await;
    harness.send("macros-test.celsius", &21.5).await.unwrap();
    harness.send("macros-test.celsius", "warm").await.unwrap();
    harness
        .send("macros-test.numbers", &[1u8, 2, 3])
        .await
        .unwrap();
    harness
        .send(
            "macros-test.own-names",
            &serde_json::json!({"text": "hi", "kind": "k"}),
        )
        .await
        .unwrap();
    harness.wait_idle().await;
    let mut seen = calls.take();
    seen.sort();
    assert_eq!(
        seen,
        [
            "celsius 21.5",
            "message macros-test.numbers [1,2,3]",
            "numbers [1, 2, 3]",
            "own event k",
            "own message hi",
        ]
    );
    // `"warm"` is not a number: a decode failure, dead-lettered without retries.
    let parked = harness.dlq("macros-test.celsius");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].error.kind, messaging_core::FailureKind::Decode);
    assert_eq!(harness.attempts("record_celsius"), 2);
    harness.shutdown().await;
}

#[test]
fn topics_may_be_constants_and_retry_may_be_grouped() {
    let price = handler("record_price");
    assert_eq!(price.topics(), ["macros-test.prices"]);
    assert_eq!(*price.retry_policy(), messaging_core::RetryPolicy::DEFAULT);
    let stock = handler("record_stock");
    assert_eq!(
        stock.topics(),
        ["macros-test.stock", "macros-test.stock.extra"]
    );
    let retry = stock.retry_policy();
    assert_eq!(retry.max_retries, 4);
    assert_eq!(retry.retry_delay, Duration::from_secs(2));
    assert_eq!(retry.backoff, Backoff::Exponential);
    assert_eq!(retry.max_delay, Duration::from_secs(60));
    assert_eq!(retry.timeout, Some(Duration::from_secs(3)));
    let filled = handler("Shelves::filled");
    assert_eq!(
        filled.topics(),
        ["macros-test.shelves", "macros-test.shelves.b"]
    );
    // The consumer's `retry(…)` and the method's own, merged key by key.
    let retry = filled.retry_policy();
    assert_eq!(retry.max_retries, 2);
    assert_eq!(retry.retry_delay, Duration::from_millis(300));
    assert_eq!(retry.backoff, Backoff::Linear);
}

#[tokio::test(start_paused = true)]
async fn handlers_on_constant_topics_and_through_a_facade_receive_messages() {
    let calls = Calls::default();
    let harness = harness(&calls).await;
    harness.send(PRICES, &5u32).await.unwrap();
    harness.send(topics::STOCK, &9u32).await.unwrap();
    harness
        .publish_event("shelf.filled", &3u32, topics::SHELVES)
        .await
        .unwrap();
    harness
        .publish_event("facade.ping", &8u32, "macros-test.facade")
        .await
        .unwrap();
    harness.wait_idle().await;
    let mut seen = calls.take();
    seen.sort();
    assert_eq!(
        seen,
        [
            "facade 8",
            "facade consumer 8",
            "filled 3",
            "price 5",
            "stock 9",
        ]
    );
    assert_eq!(handler("through_facade").topics(), ["macros-test.facade"]);
    for name in ["record_price", "record_stock", "Shelves::filled"] {
        assert!(
            harness
                .dlq_topic(&format!("{}.dlq", handler(name).topics()[0]))
                .is_empty()
        );
    }
    harness.shutdown().await;
}
