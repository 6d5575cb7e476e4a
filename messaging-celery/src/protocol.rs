//! Celery's task message, protocol version 2 with the JSON serializer, independent of the
//! transport: the headers (`task`, `id`, `root_id` …), the body
//! `[args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]`, and how a message of the
//! framework becomes one and one becomes a message of the framework (the lib docs say
//! what goes where).

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use messaging_core::message::header;
use messaging_core::{Headers, Key, OutgoingMessage};
use serde_json::{Map, Value, json};

use crate::error::CeleryError;
use crate::settings::TaskRoute;

/// The content type of the JSON serializer.
pub(crate) const CONTENT_TYPE: &str = "application/json";
/// The content encoding of the JSON serializer.
pub(crate) const CONTENT_ENCODING: &str = "utf-8";

/// The envelope's source, as a task header.
pub const EVENT_SOURCE: &str = "x-event-source";
/// The envelope's timestamp (RFC 3339), as a task header.
pub const EVENT_TIMESTAMP: &str = "x-event-timestamp";
/// On a delivered task: the Celery task name.
pub const CELERY_TASK: &str = "x-celery-task";
/// On a delivered task: the Celery task id.
pub const CELERY_TASK_ID: &str = "x-celery-task-id";
/// On a delivered task that had keyword arguments besides its one positional argument:
/// them, as a JSON object.
pub const CELERY_KWARGS: &str = "x-celery-kwargs";
/// On a delivered task that could not be decoded: why.
pub const DECODE_ERROR: &str = "x-celery-decode-error";

/// How long `argsrepr` may be, as Celery's `argsrepr_maxsize`.
const REPR_MAX: usize = 1024;

/// The headers Celery itself writes (protocol 2, and the `compression` kombu adds): a
/// message header of one of these names would change what the worker does, so it is
/// refused on publish and not passed on when delivering.
const CELERY_HEADERS: &[&str] = &[
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
    "compression",
];

/// A task ready for a transport.
#[derive(Debug)]
pub(crate) struct Task {
    /// The task id (also the AMQP `correlation_id`).
    pub id: String,
    /// The headers: Celery's and the message's.
    pub headers: Map<String, Value>,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The task that runs `route.task` with the message's data: the envelope's `data` for an
/// enveloped message (its other fields become headers), else the whole body, which must
/// then be JSON.
pub(crate) fn encode(
    message: &OutgoingMessage,
    route: &TaskRoute,
    origin: &str,
) -> Result<Task, CeleryError> {
    let refuse = |reason: String| CeleryError::Encode {
        topic: message.topic.clone(),
        reason,
    };
    let mut custom = Map::new();
    for (name, value) in &message.headers {
        if CELERY_HEADERS.contains(&name) {
            return Err(refuse(format!(
                "the header `{name}` is one of Celery's own; rename it"
            )));
        }
        custom.insert(name.to_owned(), Value::String(text(value)));
    }
    if let Some(key) = &message.key {
        custom.insert(header::KEY.to_owned(), Value::String(text(key.as_bytes())));
    }
    let (argument, id) = match enveloped(message) {
        Some(envelope) => {
            for (field, name) in [
                ("name", header::EVENT_NAME),
                ("id", header::EVENT_ID),
                ("source", EVENT_SOURCE),
                ("timestamp", EVENT_TIMESTAMP),
                ("trace_id", header::TRACE_ID),
            ] {
                if let Some(Value::String(value)) = envelope.get(field) {
                    custom.insert(name.to_owned(), Value::String(value.clone()));
                }
            }
            let id = envelope
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let mut envelope = envelope;
            (envelope.remove("data").unwrap_or(Value::Null), id)
        }
        None => {
            let argument = serde_json::from_slice(&message.payload).map_err(|e| {
                refuse(format!(
                    "its body is not JSON ({e}); Celery tasks are sent with the JSON serializer"
                ))
            })?;
            (argument, None)
        }
    };
    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let args = vec![argument];
    let mut headers = Map::new();
    headers.insert("lang".into(), json!("rust"));
    headers.insert("task".into(), json!(route.task));
    headers.insert("id".into(), json!(id));
    headers.insert("shadow".into(), Value::Null);
    headers.insert("eta".into(), Value::Null);
    headers.insert("expires".into(), Value::Null);
    headers.insert("group".into(), Value::Null);
    headers.insert("group_index".into(), Value::Null);
    headers.insert("retries".into(), json!(0));
    headers.insert("timelimit".into(), json!([null, null]));
    headers.insert("root_id".into(), json!(id));
    headers.insert("parent_id".into(), Value::Null);
    headers.insert("argsrepr".into(), json!(args_repr(&args)));
    headers.insert("kwargsrepr".into(), json!("{}"));
    headers.insert("origin".into(), json!(origin));
    headers.insert("ignore_result".into(), json!(false));
    headers.insert("replaced_task_nesting".into(), json!(0));
    headers.insert("stamped_headers".into(), Value::Null);
    headers.insert("stamps".into(), json!({}));
    headers.extend(custom);
    let body = json!([
        args,
        {},
        {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
    ]);
    Ok(Task {
        id,
        headers,
        body: serde_json::to_vec(&body).expect("JSON values always serialize"),
    })
}

/// The envelope of an enveloped message (`publish_event`, `#[event]`): a message with an
/// event name header whose body is an object with the envelope's fields.
fn enveloped(message: &OutgoingMessage) -> Option<Map<String, Value>> {
    message.headers.get_bytes(header::EVENT_NAME)?;
    let object: Map<String, Value> = serde_json::from_slice(&message.payload).ok()?;
    ["id", "name", "data", "timestamp"]
        .iter()
        .all(|field| object.contains_key(*field))
        .then_some(object)
}

/// A task message as a transport received it, before decoding.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    /// The message headers (Celery's and custom ones).
    pub headers: Map<String, Value>,
    /// The content type, if given.
    pub content_type: Option<String>,
    /// The body, as bytes (a Redis envelope's base64 already decoded).
    pub body: Bytes,
    /// What is wrong with the message before its body is even looked at (a Redis envelope
    /// that is not JSON), if anything.
    pub broken: Option<String>,
}

impl Incoming {
    /// The task name header.
    pub(crate) fn task(&self) -> Option<&str> {
        self.headers.get("task").and_then(Value::as_str)
    }
}

/// A received task, decoded for delivery.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The payload handed to the handler: the argument (or an envelope), or, when it could
    /// not be decoded, the raw body.
    pub payload: Bytes,
    /// The headers handed to the handler.
    pub headers: Headers,
    /// The key, from `x-message-key`.
    pub key: Option<Key>,
    /// Why it could not be decoded, if it could not.
    pub error: Option<String>,
}

/// Decodes a received task: the payload is its argument (one positional argument; with
/// none, the keyword arguments; with several, the list of them), wrapped in an event
/// envelope when the task carries an `x-event-name` header.
pub(crate) fn decode(incoming: Incoming) -> Decoded {
    let mut headers = Headers::default();
    let mut key = None;
    for (name, value) in &incoming.headers {
        if CELERY_HEADERS.contains(&name.as_str()) || name == DECODE_ERROR {
            continue;
        }
        let value = match value {
            Value::String(text) => text.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        if name == header::KEY {
            key = Some(Key::from(value));
        } else {
            headers.insert(name.clone(), value);
        }
    }
    if let Some(task) = incoming.task() {
        headers.insert(CELERY_TASK, task);
    }
    let task_id = incoming
        .headers
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(id) = &task_id {
        headers.insert(CELERY_TASK_ID, id.clone());
    }
    let broken = |reason: String, headers: Headers, key| Decoded {
        payload: incoming.body.clone(),
        headers,
        key,
        error: Some(reason),
    };
    if let Some(reason) = &incoming.broken {
        let mut headers = headers;
        headers.insert(DECODE_ERROR, reason.clone());
        return broken(reason.clone(), headers, key);
    }
    match argument(&incoming) {
        Ok((argument, kwargs)) => {
            if let Some(kwargs) = kwargs {
                headers.insert(CELERY_KWARGS, kwargs.to_string());
            }
            let payload = match headers.get(header::EVENT_NAME) {
                Some(name) => envelope(name, argument, &headers, task_id.as_deref()),
                None => argument,
            };
            Decoded {
                payload: Bytes::from(
                    serde_json::to_vec(&payload).expect("JSON values always serialize"),
                ),
                headers,
                key,
                error: None,
            }
        }
        Err(reason) => {
            let mut headers = headers;
            headers.insert(DECODE_ERROR, reason.clone());
            broken(reason, headers, key)
        }
    }
}

/// The argument of a task, and its keyword arguments when they come besides one positional
/// argument; or why there is none.
fn argument(incoming: &Incoming) -> Result<(Value, Option<Value>), String> {
    if incoming.task().is_none() {
        return Err(
            "no `task` header: not a Celery protocol 2 task message (protocol 1 is not supported)"
                .to_owned(),
        );
    }
    if let Some(compression) = incoming.headers.get("compression") {
        return Err(format!(
            "compressed with {compression}; Celery mode reads uncompressed tasks only"
        ));
    }
    match incoming.content_type.as_deref() {
        Some(CONTENT_TYPE) | None => {}
        Some(other) => {
            return Err(format!(
                "content type `{other}`; Celery mode reads the JSON serializer's ({CONTENT_TYPE}) only"
            ));
        }
    }
    let body: Value =
        serde_json::from_slice(&incoming.body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Array(mut parts) = body else {
        return Err("the body is not `[args, kwargs, embed]`".to_owned());
    };
    if !(2..=3).contains(&parts.len()) {
        return Err("the body is not `[args, kwargs, embed]`".to_owned());
    }
    let kwargs = parts.swap_remove(1);
    let Value::Array(mut args) = parts.swap_remove(0) else {
        return Err("the body's `args` is not a list".to_owned());
    };
    let Value::Object(kwargs) = kwargs else {
        return Err("the body's `kwargs` is not an object".to_owned());
    };
    Ok(match args.len() {
        0 => (Value::Object(kwargs), None),
        1 => (
            args.remove(0),
            (!kwargs.is_empty()).then_some(Value::Object(kwargs)),
        ),
        _ => (
            Value::Array(args),
            (!kwargs.is_empty()).then_some(Value::Object(kwargs)),
        ),
    })
}

/// The event envelope of a task that names its event: the argument as `data`, the other
/// fields from the task's headers.
fn envelope(name: &str, data: Value, headers: &Headers, task_id: Option<&str>) -> Value {
    let id = headers
        .get(header::EVENT_ID)
        .or(task_id)
        .unwrap_or_default();
    let timestamp = headers.get(EVENT_TIMESTAMP).map_or_else(
        || Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true),
        str::to_owned,
    );
    let mut envelope = json!({
        "id": id,
        "name": name,
        "data": data,
        "timestamp": timestamp,
        "source": headers.get(EVENT_SOURCE).unwrap_or_default(),
    });
    if let Some(trace) = headers.get(header::TRACE_ID) {
        envelope["trace_id"] = json!(trace);
    }
    envelope
}

/// A header value as text: UTF-8 as it is, other bytes with the invalid ones replaced (JSON
/// and AMQP task headers are text).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `argsrepr`: the arguments as Python's `repr` of the tuple prints them, shortened as
/// Celery's `saferepr` does.
fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        py_repr(arg, &mut out);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    if out.len() > REPR_MAX {
        let mut end = REPR_MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

fn py_repr(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            out.push('\'');
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("\\'"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('\'');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&Value::String(name.clone()), out);
                out.push_str(": ");
                py_repr(item, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> TaskRoute {
        TaskRoute {
            task: "billing.tasks.charge".into(),
            queue: "billing".into(),
        }
    }

    fn body(task: &Task) -> Value {
        serde_json::from_slice(&task.body).unwrap()
    }

    #[test]
    fn a_raw_body_is_the_single_argument() {
        let message = OutgoingMessage::new("order.paid", r#"{"order":7,"note":"it's"}"#)
            .with_key("u-1")
            .with_header("traceparent", "00-abc-def-01");
        let task = encode(&message, &route(), "shop").unwrap();
        assert_eq!(
            body(&task),
            json!([[{"order": 7, "note": "it's"}], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])
        );
        let h = &task.headers;
        assert_eq!(h["task"], "billing.tasks.charge");
        assert_eq!(h["id"], json!(task.id));
        assert_eq!(h["root_id"], json!(task.id));
        assert_eq!(h["parent_id"], Value::Null);
        assert_eq!(h["retries"], 0);
        assert_eq!(h["timelimit"], json!([null, null]));
        assert_eq!(h["argsrepr"], r#"({'note': 'it\'s', 'order': 7},)"#);
        assert_eq!(h["kwargsrepr"], "{}");
        assert_eq!(h["origin"], "shop");
        assert_eq!(h["x-message-key"], "u-1");
        assert_eq!(h["traceparent"], "00-abc-def-01");
    }

    #[test]
    fn an_envelope_gives_its_data_as_the_argument_and_its_fields_as_headers() {
        let envelope = json!({"id": "0190c0e2-0000-7000-8000-000000000001", "name": "user.created",
            "data": {"id": 1}, "timestamp": "2026-02-01T12:00:00Z", "source": "users", "trace_id": "t-1"});
        let message = OutgoingMessage::new("user-events", envelope.to_string())
            .with_header(header::EVENT_NAME, "user.created")
            .with_header(header::EVENT_ID, "0190c0e2-0000-7000-8000-000000000001");
        let task = encode(&message, &route(), "users").unwrap();
        assert_eq!(body(&task)[0], json!([{"id": 1}]));
        assert_eq!(task.id, "0190c0e2-0000-7000-8000-000000000001");
        let h = &task.headers;
        assert_eq!(h["x-event-name"], "user.created");
        assert_eq!(h["x-event-source"], "users");
        assert_eq!(h["x-event-timestamp"], "2026-02-01T12:00:00Z");
        assert_eq!(h["x-trace-id"], "t-1");

        // And back: the same envelope reaches a handler.
        let incoming = Incoming {
            headers: task.headers.clone(),
            content_type: Some(CONTENT_TYPE.into()),
            body: task.body.clone().into(),
            broken: None,
        };
        let decoded = decode(incoming);
        assert_eq!(decoded.error, None);
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded.payload).unwrap(),
            envelope
        );
        assert_eq!(
            decoded.headers.get(CELERY_TASK),
            Some("billing.tasks.charge")
        );
    }

    #[test]
    fn bodies_that_are_not_json_and_celery_header_names_are_refused() {
        let error = encode(&OutgoingMessage::new("t", "not json"), &route(), "s").unwrap_err();
        assert!(error.to_string().contains("not JSON"), "{error}");
        let clash = OutgoingMessage::new("t", "1").with_header("task", "x");
        assert!(encode(&clash, &route(), "s").is_err());
    }

    fn incoming(body: &str) -> Incoming {
        let mut headers = Map::new();
        headers.insert("task".into(), json!("tasks.add"));
        headers.insert("id".into(), json!("abc"));
        headers.insert("custom".into(), json!(3));
        Incoming {
            headers,
            content_type: Some(CONTENT_TYPE.into()),
            body: Bytes::copy_from_slice(body.as_bytes()),
            broken: None,
        }
    }

    #[test]
    fn the_argument_of_a_python_task_is_the_payload() {
        let payload = |body: &str| {
            let decoded = decode(incoming(body));
            assert_eq!(decoded.error, None, "{body}");
            (
                serde_json::from_slice::<Value>(&decoded.payload).unwrap(),
                decoded.headers.get(CELERY_KWARGS).map(str::to_owned),
            )
        };
        assert_eq!(payload(r#"[[{"a":1}], {}, {}]"#), (json!({"a": 1}), None));
        assert_eq!(payload(r#"[[], {"a":1}, {}]"#), (json!({"a": 1}), None));
        assert_eq!(payload(r#"[[1, 2], {}, {}]"#), (json!([1, 2]), None));
        assert_eq!(
            payload(r#"[[1], {"b":2}, {}]"#),
            (json!(1), Some(r#"{"b":2}"#.to_owned()))
        );
        let decoded = decode(incoming("[[1], {}, {}]"));
        assert_eq!(decoded.headers.get(CELERY_TASK_ID), Some("abc"));
        assert_eq!(decoded.headers.get("custom"), Some("3"));
        assert_eq!(decoded.headers.get("id"), None, "Celery's own stay out");
    }

    #[test]
    fn an_undecodable_task_keeps_its_raw_body_and_says_why() {
        for (body, why) in [
            ("{not json", "not JSON"),
            (r#"{"task": "x"}"#, "not `[args, kwargs, embed]`"),
            (r#"[{"a":1}, {}, {}]"#, "`args` is not a list"),
        ] {
            let decoded = decode(incoming(body));
            assert_eq!(&decoded.payload[..], body.as_bytes());
            let error = decoded.error.unwrap();
            assert!(error.contains(why), "{body}: {error}");
            assert_eq!(decoded.headers.get(DECODE_ERROR), Some(error.as_str()));
        }
        let mut pickled = incoming("\u{80}\u{4}");
        pickled.content_type = Some("application/x-python-serialize".into());
        assert!(decode(pickled).error.unwrap().contains("JSON serializer"));
        let mut v1 = incoming("[[1], {}, {}]");
        v1.headers.remove("task");
        assert!(decode(v1).error.unwrap().contains("protocol 1"));
    }
}
