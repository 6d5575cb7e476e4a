//! The macros register what their attributes say and the generated code calls the handlers:
//! payload decoding, extractors, `#[consumer]` dispatch by event name, foreign envelopes.
//! Retry timing, DLQ records and `#[event]` publishing are tested in their own files.
//!
//! Topics here start with `macros-test.` so that no other test binary's handlers overlap.

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
