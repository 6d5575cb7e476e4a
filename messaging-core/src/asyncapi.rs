//! The service's AsyncAPI 3.0 document (`consumer asyncapi`, DESIGN §6), made from what is
//! registered and configured, without connecting:
//!
//! - **server**: the configured broker, as its factory describes it (password masked), with
//!   the broker's server bindings;
//! - **channels**: one per topic that a handler reads or an event is published to, and one
//!   per dead-letter topic (`x-messaging-dead-letter-of` names the topics it holds records
//!   of);
//! - **operations**: a `receive` per handler and topic (`x-messaging-handler` names the
//!   handler), a `send` per `#[event]` site and [`typed_event!`](crate::typed_event) type
//!   (`x-messaging-publisher`), per `publish_to` handler, and the dead-lettering `send` of
//!   each dead-letter topic; each with the broker's bindings (the Kafka group, the AMQP
//!   exchange and queue) through [`BrokerFactory::bindings`](crate::BrokerFactory::bindings);
//! - **messages**: an event's envelope (DESIGN §3) with the framework's headers
//!   (`x-event-name`, `x-event-id`, `x-trace-id` …) and, when the data's type implements
//!   `schemars::JsonSchema` and the `schemars` feature is on, its schema (else the data is
//!   left open); a body read as is; the dead-letter record.
//!
//! Schemas are JSON Schema draft 7, AsyncAPI 3.0's default schema format; their shared
//! definitions are in `components/schemas`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::broker::{BindingOf, BrokerFactory, factory};
use crate::config::Config;
use crate::envelope::EnvelopeFields;
use crate::error::Error;
use crate::json_schema::PayloadSchema;
use crate::message::header;
use crate::registry::{EventRegistration, EventSource, HandlerKind, HandlerSpec};
use crate::retry::Backoff;

/// The AsyncAPI version of the document.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// `info.version` of the document: the core cannot know the service's own version.
pub const DOCUMENT_VERSION: &str = "0.0.0";

/// The id of the channel of replies (its address is each request's `x-reply-to`).
const REPLY_CHANNEL: &str = "messaging_replies";
/// The id of a reply's message in `components/messages`.
const REPLY_MESSAGE: &str = "reply";

/// The id of the dead-letter record's message in `components/messages`.
const DEAD_LETTER_MESSAGE: &str = "messaging.deadLetterRecord";

/// The document of `handlers` (topics as the service names them, as
/// [`RuntimeBuilder::selected_handlers`](crate::RuntimeBuilder::selected_handlers) gives them)
/// and `events` (from [`registered_events`](crate::registered_events)) on the broker that
/// `config` selects. Fails only when that broker is not linked.
pub fn document(
    handlers: &[HandlerSpec],
    events: &[&EventRegistration],
    config: &Config,
) -> Result<Value, Error> {
    let factory = factory(&config.backend)?;
    let mut doc = Document::new(config, factory);
    doc.event_schemas = event_schemas(handlers, events);
    doc.add_handlers(handlers);
    doc.add_events(events);
    Ok(doc.finish())
}

/// The document being built. Maps are sorted, so the output is stable.
struct Document<'a> {
    config: &'a Config,
    factory: &'static BrokerFactory,
    /// By address.
    channels: BTreeMap<String, Channel>,
    /// Channel ids taken, for unique ids.
    channel_ids: BTreeSet<String>,
    messages: Map<String, Value>,
    schemas: Map<String, Value>,
    operations: Map<String, Value>,
    /// The data schema of each event name, wherever it is known (a publisher or a handler),
    /// so that an event read and published is one message.
    event_schemas: BTreeMap<String, Value>,
    /// Whether a handler answers requests (then the document has the reply channel).
    replies: bool,
}

struct Channel {
    id: String,
    /// A dead-letter topic: the topics whose records it holds.
    dead_letter_of: BTreeSet<String>,
    messages: BTreeSet<String>,
}

impl<'a> Document<'a> {
    fn new(config: &'a Config, factory: &'static BrokerFactory) -> Self {
        Self {
            config,
            factory,
            channels: BTreeMap::new(),
            // The reply channel's id is not a topic's.
            channel_ids: BTreeSet::from([REPLY_CHANNEL.to_owned()]),
            messages: Map::new(),
            schemas: Map::new(),
            operations: Map::new(),
            event_schemas: BTreeMap::new(),
            replies: false,
        }
    }

    fn add_handlers(&mut self, handlers: &[HandlerSpec]) {
        for h in handlers {
            let payload = h.payload_schema();
            let message = self.handler_message(h, &payload);
            let several = h.topics().len() > 1;
            for topic in h.topics() {
                let channel = self.channel(topic);
                self.attach(topic, &message);
                let dlq = h.dlq_topic_in(topic, self.config);
                self.dead_letter_channel(&dlq, topic);
                let id = if several {
                    format!("{}.{channel}", ident(h.qualified_name()))
                } else {
                    ident(h.qualified_name())
                };
                let mut operation = json!({
                    "action": "receive",
                    "channel": channel_ref(&channel),
                    "messages": [channel_message_ref(&channel, &message)],
                    "summary": format!("{} handles {}", h.name(), match h.event_name() {
                        Some(name) => format!("`{name}` events of {topic}"),
                        None => format!("every message of {topic}"),
                    }),
                    "x-messaging-handler": h.qualified_name(),
                    "x-messaging-kind": match h.kind() {
                        HandlerKind::MessageHandler => "message_handler",
                        HandlerKind::OnEvent => "on_event",
                    },
                    "x-messaging-group": h.group_name(),
                    "x-messaging-retry": retry(h),
                    "x-messaging-dead-letter-topic": dlq,
                    "x-messaging-idempotent": h.is_idempotent(),
                });
                if let Some(schema) = h.schema() {
                    operation["x-messaging-schema"] = json!(schema);
                }
                // Every handler answers a request (a message with `x-reply-to`): with its
                // `Ok` value, `null` for `()`, or an error reply.
                operation["reply"] = json!({
                    "address": {
                        "location": "$message.header#/x-reply-to",
                        "description": "The requester's reply inbox, named by the request.",
                    },
                    "channel": channel_ref(REPLY_CHANNEL),
                    "messages": [channel_message_ref(REPLY_CHANNEL, REPLY_MESSAGE)],
                });
                self.replies = true;
                self.bindings(
                    &mut operation,
                    BindingOf::Receive {
                        topic,
                        group: h.group_name(),
                    },
                );
                self.operation(id, operation);
            }
            if let Some(to) = h.publishes_to() {
                let topic = self.config.resolve_topic(to).to_owned();
                self.publish_to(h, &topic);
            }
        }
    }

    fn add_events(&mut self, events: &[&EventRegistration]) {
        for event in events {
            let topic = self.config.resolve_topic(event.topic).to_owned();
            let message = self.event_message(event.name, &EnvelopeFields::STANDARD, None);
            let channel = self.channel(&topic);
            self.attach(&topic, &message);
            let (kind, source) = match event.source {
                EventSource::Function(name) => ("#[event]", name),
                EventSource::Type(name) => ("typed_event!", name),
            };
            let publisher = format!("{}::{source}", event.module_path);
            let mut operation = json!({
                "action": "send",
                "channel": channel_ref(&channel),
                "messages": [channel_message_ref(&channel, &message)],
                "summary": format!("{source} publishes `{}` to {topic}", event.name),
                "x-messaging-publisher": publisher,
                "x-messaging-kind": kind,
            });
            if let Some(key) = event.key_field {
                operation["x-messaging-key-field"] = json!(key);
            }
            self.bindings(&mut operation, BindingOf::Send { topic: &topic });
            self.operation(format!("{}.send", ident(&publisher)), operation);
        }
    }

    /// The `send` of a `publish_to` handler: its result goes out as an event named after its
    /// type (when it is a typed event) or the topic, with no schema known here.
    fn publish_to(&mut self, h: &HandlerSpec, topic: &str) {
        let message = self.event_message(topic, &EnvelopeFields::STANDARD, None);
        let channel = self.channel(topic);
        self.attach(topic, &message);
        let mut operation = json!({
            "action": "send",
            "channel": channel_ref(&channel),
            "messages": [channel_message_ref(&channel, &message)],
            "summary": format!("{} publishes its result to {topic}", h.name()),
            "description": "The event is named after the result's `TypedEvent::NAME` when it \
                            has one, else after the topic.",
            "x-messaging-publisher": h.qualified_name(),
            "x-messaging-kind": "publish_to",
        });
        self.bindings(&mut operation, BindingOf::Send { topic });
        self.operation(format!("{}.publish", ident(h.qualified_name())), operation);
    }

    /// The dead-letter channel `dlq` holding records of `topic`, with the runtime's `send`.
    fn dead_letter_channel(&mut self, dlq: &str, topic: &str) {
        let channel = self.channel(dlq);
        let fresh = self.channels[dlq].dead_letter_of.is_empty();
        self.channels
            .get_mut(dlq)
            .expect("just made")
            .dead_letter_of
            .insert(topic.to_owned());
        if !fresh {
            return;
        }
        if !self.messages.contains_key(DEAD_LETTER_MESSAGE) {
            self.messages
                .insert(DEAD_LETTER_MESSAGE.to_owned(), dead_letter_message());
        }
        self.attach(dlq, DEAD_LETTER_MESSAGE);
        let mut operation = json!({
            "action": "send",
            "channel": channel_ref(&channel),
            "messages": [channel_message_ref(&channel, DEAD_LETTER_MESSAGE)],
            "summary": format!("the runtime dead-letters to {dlq} what its handlers gave up on"),
            "x-messaging-kind": "dead_letter",
        });
        self.bindings(&mut operation, BindingOf::Send { topic: dlq });
        self.operation(format!("deadLetter.{channel}"), operation);
    }

    /// The message a handler reads: the event's envelope for `#[on_event]` and `Event<T>`,
    /// else the body.
    fn handler_message(&mut self, h: &HandlerSpec, payload: &PayloadSchema) -> String {
        let enveloped = payload.is_event() || h.kind() == HandlerKind::OnEvent;
        match h.event_name() {
            Some(name) if enveloped => self.event_message(name, &h.envelope, None),
            _ if enveloped => {
                let message = json!({
                    "name": format!("{}.event", h.name()),
                    "title": format!("The events {} reads", h.name()),
                    "contentType": "application/json",
                    "headers": headers(None),
                    "payload": self.envelope_schema(None, &h.envelope, payload.data().cloned()),
                });
                self.message(&format!("{}.event", ident(h.qualified_name())), message)
            }
            _ => {
                let mut message = json!({
                    "name": format!("{}.body", h.name()),
                    "title": format!("The body {} reads", h.name()),
                    "headers": body_headers(),
                });
                if let Some(schema) = payload.data() {
                    message["contentType"] = json!("application/json");
                    message["payload"] = self.hoist(schema.clone());
                }
                self.message(&format!("{}.body", ident(h.qualified_name())), message)
            }
        }
    }

    /// The message of event `name` in `envelope`, its data of `data`'s schema, else of the
    /// event's (open when unknown).
    fn event_message(
        &mut self,
        name: &str,
        envelope: &EnvelopeFields,
        data: Option<Value>,
    ) -> String {
        let data = data.or_else(|| self.event_schemas.get(name).cloned());
        let message = json!({
            "name": name,
            "title": format!("Event {name}"),
            "contentType": "application/json",
            "headers": if envelope.is_standard() { headers(Some(name)) } else { body_headers() },
            "payload": self.envelope_schema(Some(name), envelope, data),
        });
        let id = if envelope.is_standard() {
            ident(name)
        } else {
            format!("{}.{}", ident(name), ident(envelope.data))
        };
        self.message(&id, message)
    }

    /// The envelope of DESIGN §3, or a foreign one's two fields.
    fn envelope_schema(
        &mut self,
        name: Option<&str>,
        envelope: &EnvelopeFields,
        data: Option<Value>,
    ) -> Value {
        let data = data.map_or_else(|| json!({}), |schema| self.hoist(schema));
        let mut name_schema = json!({"type": "string", "description": "The event name."});
        if let Some(name) = name {
            name_schema["const"] = json!(name);
        }
        if !envelope.is_standard() {
            return json!({
                "type": "object",
                "description": "Another service's envelope: the event name and the data in fields of its own.",
                "required": [envelope.name, envelope.data],
                "properties": { envelope.name: name_schema, envelope.data: data },
            });
        }
        json!({
            "type": "object",
            "description": "The event envelope.",
            "required": ["id", "name", "data", "timestamp"],
            "properties": {
                "id": {"type": "string", "format": "uuid", "description": "Unique id (UUID v7)."},
                "name": name_schema,
                "data": data,
                "timestamp": {"type": "string", "format": "date-time", "description": "When the event was created (RFC 3339)."},
                "source": {"type": "string", "description": "The publishing service."},
                "trace_id": {"type": "string", "description": "Trace id, propagated from the message or request that caused the event."},
            },
        })
    }

    /// Moves a schema's `definitions` to `components/schemas` and points its references there.
    /// A definition of the same name and content is shared; another of the same name is
    /// renamed.
    fn hoist(&mut self, mut schema: Value) -> Value {
        let Some(Value::Object(definitions)) = schema
            .as_object_mut()
            .and_then(|object| object.remove("definitions"))
        else {
            return schema;
        };
        let mut renamed = BTreeMap::new();
        for (name, definition) in &definitions {
            let mut candidate = name.clone();
            let mut n = 1;
            while self
                .schemas
                .get(&candidate)
                .is_some_and(|existing| existing != definition)
            {
                n += 1;
                candidate = format!("{name}{n}");
            }
            renamed.insert(name.clone(), candidate);
        }
        let rewrite = |value: &mut Value| rewrite_refs(value, &renamed);
        rewrite(&mut schema);
        for (name, mut definition) in definitions {
            rewrite(&mut definition);
            self.schemas.insert(renamed[&name].clone(), definition);
        }
        schema
    }

    /// Adds `message` under `id`, or under `id` numbered when another message has that id;
    /// returns the id it has.
    fn message(&mut self, id: &str, message: Value) -> String {
        let mut candidate = id.to_owned();
        let mut n = 1;
        loop {
            match self.messages.get(&candidate) {
                None => {
                    self.messages.insert(candidate.clone(), message);
                    return candidate;
                }
                Some(existing) if *existing == message => return candidate,
                Some(_) => {
                    n += 1;
                    candidate = format!("{id}-{n}");
                }
            }
        }
    }

    /// The id of `address`'s channel, made on first use.
    fn channel(&mut self, address: &str) -> String {
        if let Some(channel) = self.channels.get(address) {
            return channel.id.clone();
        }
        let base = ident(address);
        let mut id = base.clone();
        let mut n = 1;
        while self.channel_ids.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        self.channel_ids.insert(id.clone());
        self.channels.insert(
            address.to_owned(),
            Channel {
                id: id.clone(),
                dead_letter_of: BTreeSet::new(),
                messages: BTreeSet::new(),
            },
        );
        id
    }

    fn attach(&mut self, address: &str, message: &str) {
        if let Some(channel) = self.channels.get_mut(address) {
            channel.messages.insert(message.to_owned());
        }
    }

    fn operation(&mut self, id: String, operation: Value) {
        let mut candidate = id.clone();
        let mut n = 1;
        while self.operations.contains_key(&candidate) {
            n += 1;
            candidate = format!("{id}-{n}");
        }
        self.operations.insert(candidate, operation);
    }

    /// Sets `bindings` on `object` when the broker has some for `of`.
    fn bindings(&self, object: &mut Value, of: BindingOf<'_>) {
        if let Some(bindings) = self.factory.bindings_of(self.config, of)
            && bindings.as_object().is_some_and(|b| !b.is_empty())
        {
            object["bindings"] = bindings;
        }
    }

    fn finish(self) -> Value {
        let server_id = ident(&self.config.backend);
        let mut server = server(self.config, self.factory);
        self.bindings(&mut server, BindingOf::Server);
        let mut channels = Map::new();
        let addresses: Vec<String> = self.channels.keys().cloned().collect();
        for address in addresses {
            let channel = &self.channels[&address];
            let messages: Map<String, Value> = channel
                .messages
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        json!({"$ref": format!("#/components/messages/{id}")}),
                    )
                })
                .collect();
            let mut object = json!({
                "address": address,
                "messages": messages,
            });
            if !channel.dead_letter_of.is_empty() {
                object["description"] = json!(format!(
                    "Dead-letter records of {}.",
                    channel
                        .dead_letter_of
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                object["x-messaging-dead-letter-of"] = json!(channel.dead_letter_of);
            }
            let kept = !channel.dead_letter_of.is_empty();
            let id = channel.id.clone();
            self.bindings(
                &mut object,
                BindingOf::Channel {
                    topic: &address,
                    kept,
                },
            );
            channels.insert(id, object);
        }
        let mut messages = self.messages;
        if self.replies {
            channels.insert(
                REPLY_CHANNEL.to_owned(),
                json!({
                    "address": null,
                    "description": "Replies to requests, sent to the address each request \
                                    names in `x-reply-to` (RabbitMQ direct reply-to, the \
                                    service's Kafka reply topic, a Redis stream per instance).",
                    "messages": { REPLY_MESSAGE: {"$ref": format!("#/components/messages/{REPLY_MESSAGE}")} },
                }),
            );
            messages.insert(REPLY_MESSAGE.to_owned(), reply_message());
        }
        let mut document = json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": {
                "title": self.config.source,
                "version": DOCUMENT_VERSION,
                "description": format!(
                    "The topics, handlers and events of {}, as registered with messaging \
                     and configured for the `{}` broker.",
                    self.config.source, self.config.backend
                ),
            },
            "defaultContentType": "application/json",
            "servers": { server_id: server },
            "channels": channels,
            "operations": self.operations,
            "components": { "messages": messages },
        });
        if !self.schemas.is_empty() {
            document["components"]["schemas"] = Value::Object(self.schemas);
        }
        document
    }
}

/// The data schema of each event name: its publishers' (the type they publish), else the
/// type its handlers read.
fn event_schemas(
    handlers: &[HandlerSpec],
    events: &[&EventRegistration],
) -> BTreeMap<String, Value> {
    let mut schemas = BTreeMap::new();
    for event in events {
        if let Some(schema) = (event.schema)() {
            schemas.entry(event.name.to_owned()).or_insert(schema);
        }
    }
    for h in handlers {
        if let (Some(name), Some(schema)) = (h.event_name(), h.payload_schema().data()) {
            schemas
                .entry(name.to_owned())
                .or_insert_with(|| schema.clone());
        }
    }
    schemas
}

/// The server: the broker's masked address, split into AsyncAPI's host and pathname.
fn server(config: &Config, factory: &BrokerFactory) -> Value {
    let target = factory.describe(config);
    let (protocol, host, pathname) = split_target(&target, factory.name());
    let mut server = json!({
        "host": host,
        "protocol": protocol,
        "description": format!("The `{}` broker at {target}.", factory.name()),
    });
    if let Some(pathname) = pathname {
        server["pathname"] = json!(pathname);
    }
    server
}

/// `scheme://user:***@host:port/path?query` as (scheme, host:port, /path); an address
/// without a scheme (`localhost:9092`) as (the broker's name, the address, none). The user
/// name and masked password stay out of `host`.
fn split_target(target: &str, broker: &str) -> (String, String, Option<String>) {
    let Some((scheme, rest)) = target.split_once("://") else {
        return (broker.to_owned(), target.to_owned(), None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = rest[end..].split(['?', '#']).next().unwrap_or_default();
    let pathname = (!path.is_empty() && path != "/").then(|| path.to_owned());
    (scheme.to_owned(), host.to_owned(), pathname)
}

/// The framework's headers of an enveloped message (DESIGN §3): `name` is its event name.
fn headers(name: Option<&str>) -> Value {
    let mut schema = body_headers();
    let properties = schema["properties"]
        .as_object_mut()
        .expect("body_headers has properties");
    let mut event_name = json!({"type": "string", "description": "The event name, so that routing needs not parse the body."});
    if let Some(name) = name {
        event_name["const"] = json!(name);
    }
    properties.insert(header::EVENT_NAME.to_owned(), event_name);
    properties.insert(
        header::EVENT_ID.to_owned(),
        json!({"type": "string", "format": "uuid", "description": "The envelope's id."}),
    );
    schema["required"] = json!([header::EVENT_NAME, header::EVENT_ID]);
    schema
}

/// The framework's headers that any message may carry.
fn body_headers() -> Value {
    let string = |description: &str| json!({"type": "string", "description": description});
    json!({
        "type": "object",
        "properties": {
            header::TRACE_ID: string("The trace id, propagated from the message or request that caused this one."),
            header::ATTEMPT: {"type": "string", "pattern": "^[0-9]+$", "description": "Attempts already made on this message by earlier deliveries."},
            header::KEY: string("The message key, on brokers without native keys (RabbitMQ, Redis)."),
            header::IDEMPOTENCY_KEY: string("The key an idempotent handler runs at most once for."),
            header::REPLAYED: {"type": "string", "pattern": "^[0-9]+$", "description": "On a message re-published from a dead-letter queue: how many times it has been replayed."},
            "traceparent": string("W3C trace context."),
            "tracestate": string("W3C trace context."),
        },
    })
}

/// The dead-letter record of DESIGN §3.
/// A reply: the handler's `Ok` value as JSON, an error (`{"kind", "message"}`), a chunk of a
/// streamed reply or its end, told apart by `x-reply-kind`.
fn reply_message() -> Value {
    json!({
        "name": "reply",
        "title": "Reply",
        "summary": "The answer to a request: its `x-reply-kind` says which.",
        "correlationId": { "location": "$message.header#/x-correlation-id" },
        "headers": {
            "type": "object",
            "properties": {
                "x-correlation-id": { "type": "string", "description": "The request's." },
                "x-reply-kind": { "type": "string", "enum": ["ok", "error", "chunk", "end"] },
                "x-reply-seq": { "type": "string", "description": "A chunk's place, from 0." },
            },
            "required": ["x-correlation-id"],
        },
    })
}

fn dead_letter_message() -> Value {
    let string = |description: &str| json!({"type": "string", "description": description});
    let time = |description: &str| json!({"type": "string", "format": "date-time", "description": description});
    let error = json!({
        "type": "object",
        "required": ["kind", "message"],
        "properties": {
            "kind": {"type": "string", "enum": ["handler", "schema", "decode", "panic", "timeout", "too_large"]},
            "message": {"type": "string"},
        },
    });
    json!({
        "name": "dead-letter-record",
        "title": "Dead-letter record",
        "summary": "A message its handler gave up on, with the failure (DESIGN §3).",
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "required": ["version", "original", "error", "attempts", "handler", "group", "dead_lettered_at"],
            "properties": {
                "version": {"type": "integer", "const": crate::dlq::RECORD_VERSION},
                "original": {
                    "type": "object",
                    "required": ["topic", "payload", "position"],
                    "properties": {
                        "topic": string("The topic it was read from."),
                        "key": {"type": ["string", "null"]},
                        "key_encoding": {"type": "string", "enum": ["base64"]},
                        "payload": string("The body: UTF-8 text, or base64 with `encoding`."),
                        "encoding": {"type": "string", "enum": ["base64"]},
                        "headers": {"type": "object"},
                        "position": string("Partition and offset, stream id or delivery tag."),
                        "truncated": {"type": "boolean"},
                        "size": {"type": "integer", "minimum": 0},
                    },
                },
                "error": error.clone(),
                "first_error": error,
                "attempts": {"type": "integer", "minimum": 1},
                "first_failure_at": time("When the first attempt failed."),
                "last_failure_at": time("When the last attempt failed."),
                "handler": string("The handler that failed."),
                "group": string("Its group."),
                "event_name": {"type": ["string", "null"]},
                "source": string("The service that dead-lettered it."),
                "trace_id": {"type": ["string", "null"]},
                "dead_lettered_at": time("When the record was written."),
                "id": string("The record's id, for `consumer dlq replay --id`."),
                "replays": {"type": "integer", "minimum": 0},
            },
        },
    })
}

fn retry(h: &HandlerSpec) -> Value {
    let policy = h.retry_policy();
    json!({
        "maxRetries": policy.max_retries,
        "delay": humantime::format_duration(policy.retry_delay).to_string(),
        "backoff": match policy.backoff {
            Backoff::Constant => "constant",
            Backoff::Linear => "linear",
            Backoff::Exponential => "exponential",
        },
        "viaTopics": h.uses_retry_topics(),
    })
}

fn channel_ref(channel: &str) -> Value {
    json!({"$ref": format!("#/channels/{channel}")})
}

fn channel_message_ref(channel: &str, message: &str) -> Value {
    json!({"$ref": format!("#/channels/{channel}/messages/{message}")})
}

/// `text` as a key of the document's maps (and so a JSON pointer segment with nothing to
/// escape): letters, digits, `.`, `-` and `_`; `::` becomes `.`, anything else `_`.
fn ident(text: &str) -> String {
    text.replace("::", ".")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Points `#/definitions/<name>` references at `#/components/schemas/<renamed name>`.
fn rewrite_refs(value: &mut Value, renamed: &BTreeMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "$ref"
                    && let Value::String(reference) = child
                    && let Some(name) = reference.strip_prefix("#/definitions/")
                {
                    let name = renamed.get(name).map_or(name, String::as_str);
                    *reference = format!("#/components/schemas/{name}");
                } else {
                    rewrite_refs(child, renamed);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_refs(item, renamed)),
        _ => {}
    }
}

/// `document` as YAML.
///
/// A small emitter rather than a crate: `serde_yaml` is no longer maintained and its forks
/// are young or disputed, and a JSON value needs little: block mappings and sequences, every
/// string that could read as anything else double-quoted with JSON's escapes (which YAML's
/// double-quoted scalars share), and the few characters YAML does not allow raw escaped.
pub fn to_yaml(document: &Value) -> String {
    let mut out = String::new();
    match document {
        Value::Object(map) if !map.is_empty() => yaml_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => yaml_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

/// Writes `map` at `indent`; with `continued`, its first key goes on the current line (after
/// a sequence's `- `).
fn yaml_map(out: &mut String, map: &Map<String, Value>, indent: usize, continued: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !continued {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&yaml_string(key));
        out.push(':');
        match value {
            Value::Object(child) if !child.is_empty() => {
                out.push('\n');
                yaml_map(out, child, indent + 2, false);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                yaml_seq(out, items, indent + 2);
            }
            scalar => {
                out.push(' ');
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

fn yaml_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                out.push(' ');
                yaml_map(out, map, indent + 2, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_seq(out, inner, indent + 2);
            }
            scalar => {
                out.push(' ');
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

/// A scalar, or an empty collection in flow style.
fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::String(text) => yaml_string(text),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        // null, booleans and numbers are written as JSON writes them, which YAML reads alike.
        other => other.to_string(),
    }
}

/// A string plain when it cannot read as anything else (a name such as `x-event-name`, an
/// address such as `orders.created`), else double-quoted.
fn yaml_string(text: &str) -> String {
    let mut chars = text.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '-' | '/'))
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        return text.to_owned();
    }
    // JSON's escapes are YAML's; YAML also wants DEL, the C1 controls, the line and paragraph
    // separators and the BOM escaped, which JSON writes raw.
    let quoted = serde_json::to_string(text).expect("a string serializes");
    let mut out = String::with_capacity(quoted.len());
    for c in quoted.chars() {
        match c {
            '\u{7f}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{feff}'
            | '\u{fffe}'
            | '\u{ffff}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::mask_url;
    use crate::{Broker, MemoryBroker};

    /// A broker crate as the document sees one: a URL with a password, and bindings.
    const TEST_BROKER: &str = "asyncapi-test";

    fn target(config: &Config) -> String {
        config
            .settings
            .get("ASYNCAPITEST_URL")
            .map_or_else(|| "aatest://localhost".to_owned(), mask_url)
    }

    fn bindings(_config: &Config, of: BindingOf<'_>) -> Option<Value> {
        match of {
            BindingOf::Server => Some(json!({"aatest": {"cluster": "one"}})),
            BindingOf::Channel { kept: true, topic } => Some(json!({"aatest": {"kept": topic}})),
            BindingOf::Receive { group, topic } => {
                Some(json!({"aatest": {"group": group, "topic": topic}}))
            }
            _ => None,
        }
    }

    inventory::submit! {
        BrokerFactory::new(TEST_BROKER, |_config| {
            Box::pin(async { Ok(Arc::new(MemoryBroker::new()) as Arc<dyn Broker>) })
        })
        .variables(&["ASYNCAPITEST_"])
        .target(target)
        .bindings(bindings)
    }

    fn user_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"address": {"$ref": "#/definitions/Address"}},
            "definitions": {"Address": {"type": "string"}},
        }))
    }

    static USER_CREATED: EventRegistration = EventRegistration {
        name: "user.created",
        topic: "users",
        source: EventSource::Function("register"),
        module_path: "svc::api",
        key_field: Some("id"),
        schema: user_schema,
    };

    fn handlers() -> Vec<HandlerSpec> {
        vec![
            HandlerSpec::new("pay", ["orders"], |_| async { Ok(()) }).dlq("orders.failed"),
            HandlerSpec::new("welcome", ["users"], |_| async { Ok(()) })
                .on_event("user.created")
                .group("notifications"),
        ]
    }

    fn config() -> Config {
        Config::default()
            .with_backend(TEST_BROKER)
            .with_source("svc")
            .setting(
                "ASYNCAPITEST_URL",
                "aatest://admin:hunter2@broker:7000/vhost",
            )
    }

    #[test]
    fn the_server_is_the_configured_broker_with_its_password_masked() {
        let doc = document(&handlers(), &[&USER_CREATED], &config()).unwrap();
        assert!(!doc.to_string().contains("hunter2"), "{doc:#}");
        let server = &doc["servers"][TEST_BROKER];
        assert_eq!(server["protocol"], "aatest");
        assert_eq!(server["host"], "broker:7000");
        assert_eq!(server["pathname"], "/vhost");
        assert!(
            server["description"]
                .as_str()
                .unwrap()
                .contains("aatest://admin:***@broker:7000/vhost"),
            "{server:#}"
        );
        assert_eq!(server["bindings"]["aatest"]["cluster"], "one");
        assert_eq!(doc["asyncapi"], "3.0.0");
        assert_eq!(doc["info"]["title"], "svc");
        // A broker that is not linked is an error, as for `consumer` itself.
        let unknown = config().with_backend("nope");
        assert!(document(&handlers(), &[], &unknown).is_err());
    }

    #[test]
    fn channels_operations_and_bindings_follow_the_registry() {
        let doc = document(&handlers(), &[&USER_CREATED], &config()).unwrap();
        let channels = doc["channels"].as_object().unwrap();
        let addresses: BTreeSet<&str> = channels
            .values()
            .filter_map(|c| c["address"].as_str())
            .collect();
        assert_eq!(
            addresses,
            BTreeSet::from(["orders", "orders.failed", "users", "users.dlq"])
        );
        // Replies go to the address each request names: a channel of no fixed address.
        assert_eq!(channels[REPLY_CHANNEL]["address"], Value::Null);
        // Dead-letter channels say whose records they hold, and are kept.
        let failed = &channels["orders.failed"];
        assert_eq!(failed["x-messaging-dead-letter-of"], json!(["orders"]));
        assert_eq!(failed["bindings"]["aatest"]["kept"], "orders.failed");
        assert!(channels["orders"].get("bindings").is_none());

        let ops = doc["operations"].as_object().unwrap();
        let pay = &ops["pay"];
        assert_eq!(
            pay["reply"]["address"]["location"],
            "$message.header#/x-reply-to"
        );
        assert_eq!(
            doc["components"]["messages"][REPLY_MESSAGE]["correlationId"]["location"],
            "$message.header#/x-correlation-id"
        );
        assert_eq!(pay["action"], "receive");
        assert_eq!(pay["channel"]["$ref"], "#/channels/orders");
        assert_eq!(pay["x-messaging-dead-letter-topic"], "orders.failed");
        assert_eq!(pay["bindings"]["aatest"]["group"], "pay");
        let welcome = &ops["welcome"];
        assert_eq!(welcome["bindings"]["aatest"]["group"], "notifications");
        assert_eq!(
            welcome["messages"][0]["$ref"],
            "#/channels/users/messages/user.created"
        );
        let send = &ops["svc.api.register.send"];
        assert_eq!(send["action"], "send");
        assert_eq!(send["x-messaging-key-field"], "id");
        assert_eq!(ops["deadLetter.orders.failed"]["action"], "send");

        // One message for the event, read and published alike, with the envelope's headers
        // and the data's schema; its definitions moved to components.
        let message = &doc["components"]["messages"]["user.created"];
        assert_eq!(
            message["headers"]["properties"]["x-event-name"]["const"],
            "user.created"
        );
        assert_eq!(
            message["headers"]["required"],
            json!(["x-event-name", "x-event-id"])
        );
        let data = &message["payload"]["properties"]["data"];
        assert_eq!(
            data["properties"]["address"]["$ref"],
            "#/components/schemas/Address"
        );
        assert_eq!(doc["components"]["schemas"]["Address"]["type"], "string");
        // The body `pay` reads, with no schema known, is left without one.
        let body = &doc["components"]["messages"]["pay.body"];
        assert!(body.get("payload").is_none(), "{body:#}");
    }

    #[test]
    fn topics_are_those_the_environment_names() {
        let config = config().with_topic_override("users", "prod.users");
        let mut handlers = handlers();
        handlers.truncate(1);
        let doc = document(&handlers, &[&USER_CREATED], &config).unwrap();
        assert_eq!(doc["channels"]["prod.users"]["address"], "prod.users");
        assert!(doc["channels"].get("users").is_none());
    }

    #[test]
    fn targets_split_into_host_and_path_without_credentials() {
        assert_eq!(
            split_target("amqp://guest:***@localhost:5672/%2f", "rabbitmq"),
            ("amqp".into(), "localhost:5672".into(), Some("/%2f".into()))
        );
        assert_eq!(
            split_target("redis://:***@127.0.0.1:6379/0?x=1", "redis"),
            ("redis".into(), "127.0.0.1:6379".into(), Some("/0".into()))
        );
        assert_eq!(
            split_target("localhost:9092,other:9092", "kafka"),
            ("kafka".into(), "localhost:9092,other:9092".into(), None)
        );
        assert_eq!(
            split_target("redis://localhost", "redis"),
            ("redis".into(), "localhost".into(), None)
        );
    }

    #[test]
    fn idents_are_pointer_safe() {
        assert_eq!(
            ident("my_service::Orders::on_paid"),
            "my_service.Orders.on_paid"
        );
        assert_eq!(ident("a b/c~d"), "a_b_c_d");
    }

    #[test]
    fn definitions_move_to_components_and_references_follow() {
        let config = Config::default();
        let mut doc = Document::new(&config, factory("memory").unwrap());
        let first =
            json!({"$ref": "#/definitions/Item", "definitions": {"Item": {"type": "string"}}});
        let hoisted = doc.hoist(first.clone());
        assert_eq!(hoisted, json!({"$ref": "#/components/schemas/Item"}));
        // The same definition again is shared; another of that name is renamed.
        assert_eq!(doc.hoist(first), hoisted);
        let other = json!({"items": {"$ref": "#/definitions/Item"}, "definitions": {"Item": {"type": "integer"}}});
        assert_eq!(
            doc.hoist(other),
            json!({"items": {"$ref": "#/components/schemas/Item2"}})
        );
        assert_eq!(doc.schemas["Item2"], json!({"type": "integer"}));
    }

    #[test]
    fn yaml_reads_back_as_the_json_it_was_made_from() {
        let value = json!({
            "asyncapi": "3.0.0",
            "plain": "orders.created",
            "keyword": "yes",
            "number-like": "123",
            "quote": "a \"b\" c: d # e",
            "controls": "tab\tnew\nline\u{7f}\u{85}\u{2028}",
            "empty": {},
            "none": [],
            "null": null,
            "list": [1, 2.5, true, {"a": {"b": [{"c": "d", "e": "f"}]}, "g": 1}, [3, [4]], []],
            "$ref": "#/components/x",
        });
        let yaml = to_yaml(&value);
        assert!(yaml.contains("plain: orders.created\n"), "{yaml}");
        assert!(yaml.contains("keyword: \"yes\"\n"), "{yaml}");
        assert!(yaml.contains("\\u007f\\u0085\\u2028"), "{yaml}");
        assert!(yaml.contains("- a:\n"), "{yaml}");
        // Reading it back is the integration test's (a YAML parser, `js-yaml`, compares it
        // with the JSON output); here, the layout of nested collections.
        assert!(
            yaml.contains(
                "list:\n  - 1\n  - 2.5\n  - true\n  - a:\n      b:\n        - c: d\n          e: f\n    g: 1\n  -\n    - 3\n    -\n      - 4\n  - []\n"
            ),
            "{yaml}"
        );
    }
}
