//! Attribute macros of `messaging`: [`macro@message_handler`], [`macro@consumer`] with
//! [`macro@on_event`], and [`macro@event`].
//!
//! Use them through `messaging_core` (`use messaging_core::prelude::*;`), which re-exports
//! them and holds everything their generated code calls (`messaging_core::__private`).
//!
//! Every handler is registered at link time through `inventory`: declaring it is enough for
//! the runtime, `consumer list` and the test harness to see it. The attributes are checked at
//! compile time; each mistake is reported at the offending token with the fix, all mistakes of
//! one attribute at once, and the item is still emitted so the IDE keeps working.
#![forbid(unsafe_code)]

mod attr;
mod consumer;
mod errors;
mod event;
mod message_handler;
mod registration;
mod signature;

use proc_macro::TokenStream;

/// Registers an `async fn` as the handler of every message on its topics.
///
/// ```
/// use messaging_core::prelude::*;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct OrderCreated { order_id: u64, total: f64 }
///
/// struct Db;
///
/// // Typed and validated payload; 3 retries 5 s apart, then the dead-letter queue.
/// #[message_handler(topic = "orders.created", max_retries = 3, retry_delay = "5s", schema = OrderCreated)]
/// async fn process_payment(msg: OrderCreated, db: State<Db>) -> anyhow::Result<()> {
///     let _ = (msg.order_id, msg.total, &*db);
///     Ok(())
/// }
///
/// // Several topics, untyped payload.
/// #[message_handler(topic = ["orders.created", "orders.updated"])]
/// async fn sync_inventory(msg: serde_json::Value) -> anyhow::Result<()> {
///     let _ = msg;
///     Ok(())
/// }
///
/// // A topic from a constant; the retry keys grouped as the design card writes them.
/// const ORDERS_CANCELLED: &str = "orders.cancelled";
///
/// #[message_handler(topic = ORDERS_CANCELLED, retry(max = 5, delay = "1s", backoff = "exponential"))]
/// async fn refund(msg: serde_json::Value) {
///     let _ = msg;
/// }
/// # fn main() {}
/// ```
///
/// # Keys
///
/// | key | value | default |
/// |---|---|---|
/// | `topic` | `"t"`, a `const` path of type `&str` (`ORDERS_CREATED`), or an array of them (`["t1", T2]`); required, no empty name | — |
/// | `group` | `"name"`: instances of one group share the messages | the function's name |
/// | `max_retries` | integer ≥ 0: retries after the first attempt | `3` |
/// | `retry_delay` | duration string (`"250ms"`, `"5s"`, `"1m 30s"`) | `"1s"` |
/// | `backoff` | `"constant"`, `"linear"` (delay × n) or `"exponential"` (delay × 2ⁿ⁻¹, jittered) | `"constant"` |
/// | `max_delay` | duration string: cap of one wait | `"60s"` |
/// | `timeout` | duration string: time allowed to one attempt | no limit |
/// | `dlq` | `"topic"`: where failed messages go | `"<topic>.dlq"` |
/// | `retry_topics` | `true`: retry through delay topics (`<topic>.retry.<n>`) instead of in process, so that the key goes on at once; order is given up for this handler | `false` |
/// | `idempotent` | a flag (or `idempotent = true`): run at most once per idempotency key (`x-idempotency-key`, else the envelope id) and group while the key is remembered (`MESSAGING_IDEMPOTENCY_TTL`); duplicates are acknowledged and counted, a second delivery of a key being handled waits for it, a failure frees the key for the retry | not idempotent |
/// | `retry(…)` | the retry keys grouped, as the design card writes them: `retry(max = 3, delay = "5s", backoff = "linear", max_delay = "1m", timeout = "30s")`; a setting given both here and as its own key is an error | — |
/// | `schema` | a type path implementing `Deserialize`: the body must decode as it | none |
/// | `crate` | `"path"` of a crate re-exporting `messaging_core` (a facade), used by the generated code instead of `::messaging_core` | `"::messaging_core"` |
///
/// The defaults are `messaging_core::RetryPolicy::DEFAULT`'s.
///
/// # Signature
///
/// `async fn name(payload, extractors…) -> R`, not generic, not a method.
///
/// * The first argument is the message, decoded as its *type* says (its name plays no part):
///   a type implementing `messaging_core::FromMessage` is made by it — `Event<T>` (an
///   envelope; `T` decoded from its `data`), `Bytes` (the raw body), `Message` (the whole
///   message), or your own format (protobuf, Avro…); any other `Deserialize` type is the body
///   decoded as JSON (e.g. `serde_json::Value`, `OrderCreated`, and `Vec<u8>`, which is a JSON
///   array: take `Bytes` for raw bytes). With `schema = S`, the body (for `Event<T>`, its
///   data) is first checked against `S` when the argument is another type. A body that does
///   not decode goes to the dead-letter queue at once, without retries.
/// * Further arguments are extractors, built per message: `State<T>` (a value registered on
///   the runtime with `.state(value)`, checked at start-up), `Metadata`, `Producer`, or your
///   own `FromContext` type. Argument patterns are free (`State(db): State<Db>`).
/// * `R` is `()` or `Result<_, E>` with `E: Into<HandlerError>` (e.g. `anyhow::Result<()>`);
///   an `Err` is retried unless it is `HandlerError::permanent`.
#[proc_macro_attribute]
pub fn message_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    message_handler::expand(attr.into(), item.into()).into()
}

/// Turns an inherent `impl` block into a consumer: one group, several topics, and one
/// [`macro@on_event`] method per event name, all sharing one instance of the type.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use messaging_core::prelude::*;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct UserCreated { id: u64 }
/// #[derive(Deserialize)]
/// struct PaymentCompleted { amount: f64 }
///
/// #[derive(Default)]
/// struct OrderEvents { users: AtomicU64 }
///
/// #[consumer(group = "order-service", topics = ["user-events", "payment-events"])]
/// impl OrderEvents {
///     #[on_event("user.created")]
///     async fn on_user_created(&self, event: Event<UserCreated>) -> anyhow::Result<()> {
///         self.users.fetch_add(1, Ordering::Relaxed);
///         let _ = event.data.id;
///         Ok(())
///     }
///
///     #[on_event("payment.completed", max_retries = 1)]
///     async fn on_paid(&self, event: Event<PaymentCompleted>, meta: Metadata) -> anyhow::Result<()> {
///         let _ = (event.data.amount, meta.attempt);
///         Ok(())
///     }
///
///     // Methods without #[on_event] are left alone.
///     fn users(&self) -> u64 {
///         self.users.load(Ordering::Relaxed)
///     }
/// }
///
/// // Events that other services publish in their own shape: `{"type": …, "payload": …}`.
/// #[derive(Default)]
/// struct Analytics;
///
/// #[consumer(topics = "beats", name_field = "type", data_field = "payload")]
/// impl Analytics {
///     #[on_event("BEAT_CREATED")]
///     async fn beat_created(&self, event: Event<serde_json::Value>) {
///         let _ = event.data;
///     }
/// }
/// # fn main() {}
/// ```
///
/// # Keys
///
/// | key | value | default |
/// |---|---|---|
/// | `topics` | `"t"`, a `const` path of type `&str`, or an array of them; required | — |
/// | `group` | `"name"` | the type's name |
/// | `name_field` | field of the body holding the event name | `"name"` |
/// | `data_field` | field of the body holding the data | `"data"` |
/// | `max_retries`, `retry_delay`, `backoff`, `max_delay`, `timeout`, `retry(…)`, `dlq`, `retry_topics`, `idempotent` | as in [`macro@message_handler`]; defaults for every method | the core's |
/// | `crate` | as in [`macro@message_handler`]; also used for every `#[on_event]` method | `"::messaging_core"` |
///
/// The type must be `Default + Send + Sync + 'static`: the runtime makes its one instance with
/// `Default::default()` at start-up, unless a value of the type was registered with
/// `.state(value)`. Methods take `&self` (the instance serves concurrent messages; keep
/// mutable state in atomics or a `Mutex`). Event names that no method handles are
/// acknowledged and counted, not retried.
#[proc_macro_attribute]
pub fn consumer(attr: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand(attr.into(), item.into()).into()
}

/// Marks a method of a [`macro@consumer`] impl as the handler of one event name:
/// `#[on_event("user.created")]`, optionally with its own retry keys
/// (`#[on_event("payment.completed", max_retries = 1, retry_delay = "250ms")]`).
///
/// The method is `async fn name(&self, event, extractors…) -> R` with the same argument and
/// return rules as [`macro@message_handler`]; the event is usually `Event<T>`. The
/// registration is named `Type::method`, and takes its group and topics from the consumer.
///
/// A bare `#[on_event]` (or one with only retry keys) takes the event name from the data
/// type: the method must take `Event<T>` with `T: TypedEvent` (else the compiler asks for
/// the name in the attribute):
///
/// ```
/// use messaging_core::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct MoodCreated { score: u8 }
///
/// impl TypedEvent for MoodCreated {
///     const NAME: &'static str = "user.mood.created";
///     const TOPIC: &'static str = "aura360.user.events";
/// }
///
/// #[derive(Default)]
/// struct Moods;
///
/// #[consumer(topics = ["aura360.user.events"])]
/// impl Moods {
///     #[on_event] // "user.mood.created"
///     async fn created(&self, event: Event<MoodCreated>) {
///         let _ = event.data.score;
///     }
/// }
/// # fn main() {}
/// ```
///
/// `#[consumer]` reads and removes these attributes; one that expands on its own was placed
/// outside a `#[consumer]` impl, which is an error.
#[proc_macro_attribute]
pub fn on_event(_attr: TokenStream, item: TokenStream) -> TokenStream {
    consumer::expand_on_event(item.into()).into()
}

/// Publishes an event with the `Ok` value of an `async fn` (typically an axum handler) after
/// it returned; nothing is published on `Err`.
///
/// ```
/// use axum::{Json, Router, routing::post};
/// use axum::http::StatusCode;
/// use messaging_core::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct NewUser { email: String }
/// #[derive(Serialize)]
/// struct UserOut { id: u64, email: String }
///
/// // The data is the `UserOut` inside `Json`; the message key is its `id` field.
/// #[event("user.created", topic = "user-events", key_field = "id")]
/// async fn register(Json(body): Json<NewUser>) -> Result<Json<UserOut>, StatusCode> {
///     if body.email.is_empty() {
///         return Err(StatusCode::BAD_REQUEST); // nothing published
///     }
///     Ok(Json(UserOut { id: 1, email: body.email }))
/// }
///
/// // Only the fact that it happened: the data is `{}`.
/// #[event("user.pinged", topic = "user-events", include_result = false)]
/// async fn ping() -> Result<StatusCode, StatusCode> {
///     Ok(StatusCode::NO_CONTENT)
/// }
///
/// # fn main() {
/// // Still ordinary axum handlers.
/// let app: Router = Router::new().route("/users", post(register)).route("/ping", post(ping));
/// # let _ = app;
/// # }
/// ```
///
/// # Arguments
///
/// | argument | value | default |
/// |---|---|---|
/// | first, positional | the event name, `"user.created"`; required | — |
/// | `topic` | the topic to publish on, a literal or a `const` path of type `&str`; required | — |
/// | `key_field` | a field of the data type, by its Rust name (checked at compile time), whose value becomes the message key (a string as is, `None` as no key, else its JSON text); the data must be a struct, so a `serde_json::Value` cannot have one | no key |
/// | `idempotency_key` | a field of the data type, as `key_field` (checked at compile time), whose value is sent as the `x-idempotency-key` header; without it, the request's `Idempotency-Key` header when the router has the `messaging_core::trace::http_middleware` layer | no key |
/// | `include_result` | `false` publishes `{}` as the data | `true` |
/// | `crate` | as in [`macro@message_handler`] | `"::messaging_core"` |
///
/// The function keeps its signature and body (`?` and `return` work as written). After the
/// body produced `Ok(value)`, the data is `T` for `Json<T>` and `(StatusCode, Json<T>)`, and
/// the value itself for any other `Serialize` type; it is wrapped in the standard envelope
/// and published in the background through the global producer. Publishing never changes the
/// function's result: a failure is logged and counted (`messaging_events_dropped_total`).
/// The return type must be a `Result` named as such (`Result<…>`, `anyhow::Result<…>`, an
/// alias ending in `Result`) with a concrete `Ok` type.
///
/// The event is also registered at link time (`messaging_core::registered_events`), so that
/// the AsyncAPI document (`consumer asyncapi`) lists a send operation for it, with the data
/// type's JSON Schema when it implements `schemars::JsonSchema` and `messaging-core`'s
/// `schemars` feature is on.
#[proc_macro_attribute]
pub fn event(attr: TokenStream, item: TokenStream) -> TokenStream {
    event::expand(attr.into(), item.into()).into()
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use crate::{consumer, event, message_handler};

    /// With `crate = "…"`, the generated code names no `messaging_core` path.
    #[test]
    fn crate_option_replaces_every_core_path() {
        let expansions = [
            message_handler::expand(
                quote!(topic = "t", crate = "facade", schema = S, max_retries = 1),
                quote!(
                    async fn h(e: Event<S>, db: State<Db>) -> anyhow::Result<()> {
                        Ok(())
                    }
                ),
            ),
            consumer::expand(
                quote!(topics = ["t"], crate = "facade"),
                quote!(impl C {
                    #[on_event("a")]
                    async fn a(&self, e: Event<S>) {}
                    #[on_event]
                    async fn b(&self, e: Event<T>) {}
                }),
            ),
            event::expand(
                quote!("e", topic = T, key_field = "id", crate = "facade"),
                quote!(
                    async fn p() -> Result<Json<U>, E> {
                        todo!()
                    }
                ),
            ),
        ];
        for expansion in expansions {
            let text = expansion.to_string();
            assert!(!text.contains("compile_error"), "{text}");
            assert!(text.contains("facade :: __private"), "{text}");
            assert!(!text.contains("messaging_core"), "{text}");
        }
    }
}
