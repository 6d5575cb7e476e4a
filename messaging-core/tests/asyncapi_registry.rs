//! What the macros register for the AsyncAPI document (`consumer asyncapi`): `#[event]`
//! sites and `typed_event!` types as published events, and each handler's body shape; the
//! schemas of types that implement `JsonSchema` when the `schemars` feature is on, none
//! without it.
//!
//! Names here start with `asyncapi-test.` so that no other test binary's overlap.
//!
//! Run with: cargo test -p messaging-core --features axum,schemars --test asyncapi_registry
#![cfg(feature = "axum")]

use axum::Json;
use axum::http::StatusCode;
use bytes::Bytes;
use messaging_core::json_schema::PayloadSchema;
use messaging_core::prelude::*;
use messaging_core::{EventSource, registered_events, registered_handlers};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Account {
    id: u64,
}

/// By hand: the crate has `schemars` without its derive.
#[cfg(feature = "schemars")]
impl schemars::JsonSchema for Account {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Account".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "object", "properties": {"id": {"type": "integer"}}})
    }
}

/// A type without a schema.
#[derive(Debug, Serialize, Deserialize)]
struct Opaque {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccountClosed {
    id: u64,
}

messaging_core::typed_event!(
    AccountClosed,
    name = "asyncapi-test.account.closed",
    topic = "asyncapi-test.accounts"
);

#[event(
    "asyncapi-test.account.opened",
    topic = "asyncapi-test.accounts",
    key_field = "id"
)]
async fn open_account() -> Result<(StatusCode, Json<Account>), String> {
    Ok((StatusCode::CREATED, Json(Account { id: 1 })))
}

#[event("asyncapi-test.opaque", topic = "asyncapi-test.accounts")]
async fn opaque() -> Result<Json<Opaque>, String> {
    Ok(Json(Opaque { id: 1 }))
}

#[message_handler(topic = "asyncapi-test.validated", schema = Account)]
async fn validated(body: serde_json::Value) {
    let _ = body;
}

#[message_handler(topic = "asyncapi-test.raw")]
async fn raw(body: Bytes) {
    let _ = body;
}

#[derive(Debug, Default)]
struct Accounts;

#[consumer(group = "asyncapi-test-accounts", topics = ["asyncapi-test.accounts"])]
impl Accounts {
    #[on_event("asyncapi-test.account.opened")]
    async fn opened(&self, event: Event<Account>) {
        let _ = event;
    }

    #[on_event("asyncapi-test.opaque")]
    async fn opaque(&self, event: Event<Opaque>) {
        let _ = event;
    }
}

/// `Account`'s schema with the `schemars` feature, none without.
fn assert_account_schema(schema: Option<&serde_json::Value>) {
    let schema = schema.map(|s| s["type"].clone());
    if cfg!(feature = "schemars") {
        assert_eq!(schema, Some(serde_json::json!("object")));
    } else {
        assert_eq!(schema, None);
    }
}

#[test]
fn event_sites_and_typed_events_are_registered_with_their_schemas() {
    let events = registered_events();
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} is not registered: {events:?}"))
    };
    let opened = find("asyncapi-test.account.opened");
    assert_eq!(opened.topic, "asyncapi-test.accounts");
    assert_eq!(opened.source, EventSource::Function("open_account"));
    assert_eq!(opened.key_field, Some("id"));
    assert_eq!(opened.module_path, module_path!());
    // The data of `(StatusCode, Json<Account>)` is an `Account`.
    assert_account_schema((opened.schema)().as_ref());
    assert_eq!((find("asyncapi-test.opaque").schema)(), None);

    let closed = find("asyncapi-test.account.closed");
    assert_eq!(closed.source, EventSource::Type("AccountClosed"));
    assert_eq!(closed.topic, "asyncapi-test.accounts");
    assert_eq!((closed.schema)(), None);
    assert_eq!(
        <AccountClosed as TypedEvent>::NAME,
        "asyncapi-test.account.closed"
    );
}

#[test]
fn handlers_say_the_shape_and_schema_of_the_body_they_read() {
    let handlers = registered_handlers();
    let payload = |name: &str| {
        handlers
            .iter()
            .find(|h| h.qualified_name().ends_with(name))
            .unwrap_or_else(|| panic!("{name} is not registered"))
            .payload_schema()
    };
    // The `schema` type's schema, for a body read as `serde_json::Value`.
    let validated = payload("::validated");
    assert!(!validated.is_event());
    assert_account_schema(validated.data());
    assert_eq!(payload("::raw"), PayloadSchema::Body(None));
    let opened = payload("Accounts::opened");
    assert!(opened.is_event());
    assert_account_schema(opened.data());
    assert_eq!(payload("Accounts::opaque"), PayloadSchema::Event(None));
}

#[tokio::test]
async fn the_event_sites_still_run() {
    // The registration sits in the function's body: the function is unchanged.
    assert_eq!(open_account().await.unwrap().0, StatusCode::CREATED);
    assert!(opaque().await.is_ok());
}
