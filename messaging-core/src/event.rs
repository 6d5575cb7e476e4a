//! The publishing side of `#[event]`: after an HTTP handler returned `Ok(value)`, the value is
//! wrapped in an envelope and published in the background.
//!
//! Which part of the `Ok` value is the event data is picked by method resolution on
//! [`EventData`] ("autoref specialisation"): `Json<T>` and `(StatusCode, Json<T>)` give `T`,
//! anything else that is `Serialize` gives itself.

use serde::Serialize;
use serde_json::Value;

use crate::metrics::metrics;
use crate::producer::get_producer;

/// What an `#[event]` attribute declared.
#[derive(Clone, Copy, Debug)]
pub struct EventSpec {
    /// Event name.
    pub name: &'static str,
    /// Topic to publish on.
    pub topic: &'static str,
    /// Field of the data whose value becomes the message key.
    pub key_field: Option<&'static str>,
    /// Whether the data is the handler's result (`true`) or `{}`.
    pub include_result: bool,
}

/// Wraps a handler's `Ok` value for [`ViaJson`] / [`ViaSerialize`] resolution.
pub struct EventData<'a, T>(pub &'a T);

/// Event data of the handler result itself.
pub trait ViaSerialize {
    /// The data as JSON.
    fn to_event_data(&self) -> Result<Value, serde_json::Error>;
}

impl<T: Serialize> ViaSerialize for &EventData<'_, T> {
    fn to_event_data(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self.0)
    }
}

/// Event data of what an axum response wraps.
#[cfg(feature = "axum")]
pub trait ViaJson {
    /// The data as JSON.
    fn to_event_data(&self) -> Result<Value, serde_json::Error>;
}

#[cfg(feature = "axum")]
impl<T: Serialize> ViaJson for EventData<'_, axum::Json<T>> {
    fn to_event_data(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(&self.0.0)
    }
}

#[cfg(feature = "axum")]
impl<T: Serialize> ViaJson for EventData<'_, (axum::http::StatusCode, axum::Json<T>)> {
    fn to_event_data(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(&self.0.1.0)
    }
}

tokio::task_local! {
    /// The `Idempotency-Key` of the HTTP request being handled, put in scope by
    /// [`crate::trace::http_middleware`].
    static REQUEST_IDEMPOTENCY_KEY: Option<String>;
}

/// Runs `future` with an HTTP request's `Idempotency-Key` in scope: events fired by
/// `#[event]` handlers inside carry it as `x-idempotency-key` (unless the attribute names an
/// `idempotency_key` field).
#[cfg(feature = "axum")]
pub(crate) async fn with_request_idempotency_key<F: std::future::Future>(
    key: Option<String>,
    future: F,
) -> F::Output {
    REQUEST_IDEMPOTENCY_KEY.scope(key, future).await
}

fn request_idempotency_key() -> Option<String> {
    REQUEST_IDEMPOTENCY_KEY
        .try_with(Clone::clone)
        .ok()
        .flatten()
}

/// [`emit_event_with`] without an idempotency key of the data (the request's still applies).
pub fn emit_event(spec: &EventSpec, data: Result<Value, serde_json::Error>, key: Option<String>) {
    emit_event_with(spec, data, key, None);
}

/// Publishes the event in the background with `key`, which the generated code took from the
/// data's `key_field`, and `idempotency_key` (from `idempotency_key = "field"`; else the HTTP
/// request's `Idempotency-Key` header, when one is in scope). Never fails the caller: a data
/// that does not serialize or a publish that fails is logged and counted as dropped.
pub fn emit_event_with(
    spec: &EventSpec,
    data: Result<Value, serde_json::Error>,
    key: Option<String>,
    idempotency_key: Option<String>,
) {
    let data = match data {
        Ok(data) if spec.include_result => data,
        Ok(_) => Value::Object(Default::default()),
        Err(error) => {
            metrics().record_dropped();
            tracing::warn!(event = spec.name, %error, "event dropped: result does not serialize");
            return;
        }
    };
    let producer = get_producer();
    match producer.envelope(spec.name, &data, spec.topic, key) {
        Ok((_, mut message)) => {
            if let Some(idempotency_key) = idempotency_key.or_else(request_idempotency_key) {
                message
                    .headers
                    .insert(crate::message::header::IDEMPOTENCY_KEY, idempotency_key);
            }
            producer.fire(message)
        }
        Err(error) => {
            metrics().record_dropped();
            tracing::warn!(event = spec.name, %error, "event dropped: envelope does not serialize");
        }
    }
}
