//! The handler registry: registrations made by the macros at link time (`inventory`) or in
//! code, checked once and turned into a routing plan per group.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use crate::envelope::EnvelopeFields;
use crate::error::Error;
use crate::extract::Requirement;
use crate::handler::{HandlerFn, HandlerFuture, HandlerResult, Invocation};
use crate::json_schema::PayloadSchema;
use crate::retry::RetryPolicy;

/// Which macro (or builder call) made a registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    /// `#[message_handler]`: every message of its topics.
    MessageHandler,
    /// `#[on_event]` inside a `#[consumer]`: messages of one event name.
    OnEvent,
}

/// Makes the default instance of a `#[consumer]` type, keyed by its type.
pub type InstanceFn = fn() -> (TypeId, Arc<dyn Any + Send + Sync>);

/// A registration as the macros emit it: `const`-constructible, so `inventory::submit!` can
/// hold it in a static.
pub struct HandlerRegistration {
    /// The handler's name (`process_payment`, `OrderEvents::on_paid`).
    pub name: &'static str,
    /// `module_path!()` where it was declared.
    pub module_path: &'static str,
    /// `file!()` and `line!()` where it was declared, for error messages.
    pub file: &'static str,
    /// See `file`.
    pub line: u32,
    /// Which macro made it.
    pub kind: HandlerKind,
    /// Topics it consumes.
    pub topics: &'static [&'static str],
    /// Its group; `None` means the handler's own name.
    pub group: Option<&'static str>,
    /// The event name (`#[on_event]` only).
    pub event_name: Option<&'static str>,
    /// Where the event name and data live in the body.
    pub envelope: EnvelopeFields,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Dead-letter topic; `None` means `<topic>.dlq`.
    pub dlq: Option<&'static str>,
    /// Retries through delay topics instead of in-process (`retry_topics`).
    pub retry_topics: bool,
    /// Runs at most once per idempotency key and group (`idempotent`).
    pub idempotent: bool,
    /// The schema type's name, for listings.
    pub schema: Option<&'static str>,
    /// Where the handler's `Ok` value is published (`publish_to`), for listings.
    pub publish_to: Option<&'static str>,
    /// Values the extractors need, checked at start-up.
    pub requires: &'static [fn() -> Option<Requirement>],
    /// For `#[on_event]`: the consumer type and how to make its default instance.
    pub instance: Option<InstanceFn>,
    /// The shape and schema of the body it reads, for the AsyncAPI document.
    pub payload: fn() -> PayloadSchema,
    /// Runs one attempt.
    pub call: fn(&Invocation) -> HandlerFuture,
}

inventory::collect!(HandlerRegistration);

/// What publishes an event, as the AsyncAPI document lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSource {
    /// `#[event]` on a function (an HTTP handler): its name.
    Function(&'static str),
    /// A payload type declared with [`typed_event!`](crate::typed_event): its name.
    Type(&'static str),
}

/// An event this service publishes: an `#[event]` site or a type declared with
/// [`typed_event!`](crate::typed_event), registered at link time for the AsyncAPI document
/// (`consumer asyncapi`). `const`-constructible, as [`HandlerRegistration`].
#[derive(Debug)]
pub struct EventRegistration {
    /// The event name (`user.created`).
    pub name: &'static str,
    /// The topic it is published to, before `MESSAGING_TOPIC_<NAME>` overrides.
    pub topic: &'static str,
    /// What publishes it.
    pub source: EventSource,
    /// `module_path!()` where it was declared.
    pub module_path: &'static str,
    /// The field of the data whose value is the message key, if any.
    pub key_field: Option<&'static str>,
    /// The schema of the envelope's data, when its type has one (see
    /// [`json_schema`](crate::json_schema)).
    pub schema: fn() -> Option<serde_json::Value>,
}

inventory::collect!(EventRegistration);

/// The events this service publishes (`#[event]` sites and typed events), by event name, then
/// topic, then where they are declared.
pub fn registered_events() -> Vec<&'static EventRegistration> {
    let mut events: Vec<_> = inventory::iter::<EventRegistration>.into_iter().collect();
    events.sort_by_key(|e| (e.name, e.topic, e.module_path, e.source_name()));
    events
}

impl EventRegistration {
    /// The function or type that publishes it.
    pub fn source_name(&self) -> &'static str {
        match self.source {
            EventSource::Function(name) | EventSource::Type(name) => name,
        }
    }
}

/// Every registration linked into this binary.
pub fn registrations() -> impl Iterator<Item = &'static HandlerRegistration> {
    inventory::iter::<HandlerRegistration>.into_iter()
}

/// A handler as the runtime sees it, from a registration or built in code.
#[derive(Clone)]
pub struct HandlerSpec {
    pub(crate) name: &'static str,
    pub(crate) qualified_name: String,
    pub(crate) declared_at: String,
    pub(crate) kind: HandlerKind,
    pub(crate) topics: Vec<String>,
    pub(crate) group: String,
    pub(crate) event_name: Option<String>,
    pub(crate) envelope: EnvelopeFields,
    pub(crate) retry: RetryPolicy,
    pub(crate) dlq: Option<String>,
    pub(crate) retry_topics: bool,
    pub(crate) idempotent: bool,
    pub(crate) schema: Option<String>,
    pub(crate) publish_to: Option<String>,
    pub(crate) requires: Vec<Requirement>,
    pub(crate) instance: Option<InstanceFn>,
    pub(crate) payload: fn() -> PayloadSchema,
    pub(crate) call: HandlerFn,
}

impl std::fmt::Debug for HandlerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerSpec")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("group", &self.group)
            .field("event_name", &self.event_name)
            .field("retry", &self.retry)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

impl HandlerSpec {
    /// A handler built in code, for topics known only at run time. `call` runs one attempt.
    ///
    /// ```
    /// use messaging_core::{HandlerSpec, decode_json};
    /// let spec = HandlerSpec::new("audit", ["audit.log"], |inv| async move {
    ///     let body: serde_json::Value = decode_json(&inv.message)?;
    ///     println!("{body}");
    ///     Ok(())
    /// });
    /// ```
    pub fn new<I, S, F, Fut>(name: &str, topics: I, call: F) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::with_call(
            name,
            topics,
            Arc::new(move |inv: &Invocation| Box::pin(call(inv.clone()))),
        )
    }

    /// Like [`HandlerSpec::new`], but `call` borrows the invocation and takes what its
    /// future needs before returning it, as the attribute macros' handlers do: nothing is
    /// cloned per attempt that the handler does not clone itself.
    ///
    /// ```
    /// use messaging_core::{HandlerSpec, decode_json};
    /// let spec = HandlerSpec::borrowing("audit", ["audit.log"], |inv| {
    ///     let body = decode_json::<serde_json::Value>(&inv.message);
    ///     async move {
    ///         println!("{}", body?);
    ///         Ok(())
    ///     }
    /// });
    /// ```
    pub fn borrowing<I, S, F, Fut>(name: &str, topics: I, call: F) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        F: Fn(&Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::with_call(
            name,
            topics,
            Arc::new(move |inv: &Invocation| Box::pin(call(inv))),
        )
    }

    fn with_call<I, S>(name: &str, topics: I, call: HandlerFn) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        Self {
            name,
            qualified_name: name.to_owned(),
            declared_at: "registered in code".to_owned(),
            kind: HandlerKind::MessageHandler,
            topics: topics.into_iter().map(Into::into).collect(),
            group: name.to_owned(),
            event_name: None,
            envelope: EnvelopeFields::STANDARD,
            retry: RetryPolicy::DEFAULT,
            dlq: None,
            retry_topics: false,
            idempotent: false,
            schema: None,
            publish_to: None,
            requires: Vec::new(),
            instance: None,
            payload: crate::json_schema::unknown_payload,
            call,
        }
    }

    /// Handles only events of this name (as `#[on_event]`).
    pub fn on_event(mut self, event_name: impl Into<String>) -> Self {
        self.kind = HandlerKind::OnEvent;
        self.event_name = Some(event_name.into());
        self
    }

    /// Sets the group (default: the handler's name).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the dead-letter topic (default `<topic>.dlq`).
    pub fn dlq(mut self, topic: impl Into<String>) -> Self {
        self.dlq = Some(topic.into());
        self
    }

    /// Retries through delay topics (`retry_topics`, as Spring Kafka's `@RetryableTopic`):
    /// a failed message is published to `<topic>.retry.<attempt>` with its due time and
    /// acknowledged, so that its key goes on at once. Order is given up for this handler.
    pub fn retry_topics(mut self, yes: bool) -> Self {
        self.retry_topics = yes;
        self
    }

    /// Names the topic its results are published to, for `consumer list` (a handler built
    /// in code publishes them itself; `publish_to` of the macros does it for the function).
    pub fn publish_to(mut self, topic: impl Into<String>) -> Self {
        self.publish_to = Some(topic.into());
        self
    }

    /// The topic its results are published to, if any.
    pub fn publishes_to(&self) -> Option<&str> {
        self.publish_to.as_deref()
    }

    /// Runs the handler at most once per idempotency key (the `x-idempotency-key` header,
    /// else the envelope id) and group while the key is remembered (`idempotent`); a
    /// duplicate is acknowledged without running and counted in
    /// `messaging_duplicates_total`. A message with neither header runs as usual.
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }

    /// Whether it is idempotent.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// Whether it retries through delay topics.
    pub fn uses_retry_topics(&self) -> bool {
        self.retry_topics
    }

    /// The delay topics of `topic` it reads: one per retry, `<topic>.retry.<n>`; none
    /// without `retry_topics`.
    pub fn delay_topics(&self, topic: &str) -> Vec<String> {
        if !self.retry_topics {
            return Vec::new();
        }
        (1..=self.retry.max_retries)
            .map(|n| retry_topic(topic, n))
            .collect()
    }

    /// Reads a foreign envelope: the event name and the data are in these fields.
    pub fn envelope(mut self, fields: EnvelopeFields) -> Self {
        self.envelope = fields;
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// Its module-qualified name.
    pub fn qualified_name(&self) -> &str {
        &self.qualified_name
    }

    /// Topics it consumes.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Its group.
    pub fn group_name(&self) -> &str {
        &self.group
    }

    /// Its event name, for `#[on_event]` handlers.
    pub fn event_name(&self) -> Option<&str> {
        self.event_name.as_deref()
    }

    /// Its retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The schema type, if declared.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The shape and schema of the body it reads: an envelope or a plain body, and the
    /// data's JSON Schema when its type has one (see [`json_schema`](crate::json_schema)).
    pub fn payload_schema(&self) -> PayloadSchema {
        (self.payload)()
    }

    /// Whether it was made by `#[message_handler]` or `#[on_event]`.
    pub fn kind(&self) -> HandlerKind {
        self.kind
    }

    /// The dead-letter topic for messages of `topic` with no global override: the handler's
    /// own, else `<topic>.dlq`.
    pub fn dlq_topic(&self, topic: &str) -> String {
        crate::dlq::resolve_dlq_topic(topic, self.dlq.as_deref(), None)
    }

    /// The dead-letter topic for messages of `topic` under `config`: the handler's own, else
    /// the global `MESSAGING_DLQ_TOPIC`, else `<topic>.dlq`.
    pub fn dlq_topic_in(&self, topic: &str, config: &crate::config::Config) -> String {
        crate::dlq::resolve_dlq_topic(topic, self.dlq.as_deref(), config.dlq_topic.as_deref())
    }

    pub(crate) fn from_registration(r: &'static HandlerRegistration) -> Self {
        let call = r.call;
        Self {
            name: r.name,
            qualified_name: format!("{}::{}", r.module_path, r.name),
            declared_at: format!("{}:{}", r.file, r.line),
            kind: r.kind,
            topics: r.topics.iter().map(|t| (*t).to_owned()).collect(),
            group: r.group.unwrap_or(r.name).to_owned(),
            event_name: r.event_name.map(str::to_owned),
            envelope: r.envelope,
            retry: r.retry,
            dlq: r.dlq.map(str::to_owned),
            retry_topics: r.retry_topics,
            idempotent: r.idempotent,
            schema: r.schema.map(str::to_owned),
            publish_to: r.publish_to.map(str::to_owned),
            requires: r.requires.iter().filter_map(|f| f()).collect(),
            instance: r.instance,
            payload: r.payload,
            call: Arc::new(call),
        }
    }
}

/// The delay topic where a message of `topic` waits for its retry after `attempt` attempts.
pub fn retry_topic(topic: &str, attempt: u32) -> String {
    format!("{topic}.retry.{attempt}")
}

/// The registered handlers, from the macros.
pub fn registered_handlers() -> Vec<HandlerSpec> {
    let mut specs: Vec<_> = registrations()
        .map(HandlerSpec::from_registration)
        .collect();
    specs.sort_by(|a, b| a.qualified_name.cmp(&b.qualified_name));
    specs
}

/// How one topic of one group is routed.
#[derive(Clone, Debug)]
pub(crate) enum TopicRoute {
    /// One `#[message_handler]` takes every message.
    Single(usize),
    /// `#[on_event]` handlers by event name.
    ByEvent {
        envelope: EnvelopeFields,
        handlers: HashMap<String, usize>,
    },
}

/// The routing of one group: which handler (an index into the plan's handlers) gets what.
#[derive(Clone, Debug)]
pub(crate) struct GroupPlan {
    pub group: String,
    pub topics: Vec<String>,
    pub routes: HashMap<String, TopicRoute>,
}

/// Checks the handlers and groups their routes. Every problem is reported, not just the first.
pub(crate) fn plan(handlers: &[HandlerSpec]) -> Result<Vec<GroupPlan>, Error> {
    let mut problems = problems(handlers);
    let mut groups: BTreeMap<&str, GroupPlan> = BTreeMap::new();
    for (index, h) in handlers.iter().enumerate() {
        let plan = groups.entry(&h.group).or_insert_with(|| GroupPlan {
            group: h.group.clone(),
            topics: Vec::new(),
            routes: HashMap::new(),
        });
        for topic in &h.topics {
            if !plan.topics.contains(topic) {
                plan.topics.push(topic.clone());
            }
            match (plan.routes.get_mut(topic), &h.event_name) {
                (None, None) => {
                    plan.routes.insert(topic.clone(), TopicRoute::Single(index));
                }
                (None, Some(name)) => {
                    let handlers = HashMap::from([(name.clone(), index)]);
                    plan.routes.insert(
                        topic.clone(),
                        TopicRoute::ByEvent {
                            envelope: h.envelope,
                            handlers,
                        },
                    );
                }
                (
                    Some(TopicRoute::ByEvent {
                        envelope,
                        handlers: by_name,
                    }),
                    Some(name),
                ) => {
                    if *envelope != h.envelope {
                        problems.push(format!(
                            "group `{}` reads topic `{topic}` with two envelope layouts ({} and {})",
                            h.group, by_name.values().map(|&i| handlers[i].qualified_name.as_str()).next().unwrap_or("?"), h.qualified_name
                        ));
                    }
                    if let Some(&other) = by_name.get(name) {
                        problems.push(format!(
                            "event `{name}` on topic `{topic}` in group `{}` has two handlers: {} ({}) and {} ({})",
                            h.group,
                            handlers[other].qualified_name,
                            handlers[other].declared_at,
                            h.qualified_name,
                            h.declared_at
                        ));
                    } else {
                        by_name.insert(name.clone(), index);
                    }
                }
                (Some(existing), _) => {
                    let other = match existing {
                        TopicRoute::Single(i) => *i,
                        TopicRoute::ByEvent {
                            handlers: by_name, ..
                        } => by_name.values().copied().next().unwrap_or(index),
                    };
                    problems.push(format!(
                        "topic `{topic}` in group `{}` has two handlers: {} ({}) and {} ({}); \
                         give one of them its own `group`",
                        h.group,
                        handlers[other].qualified_name,
                        handlers[other].declared_at,
                        h.qualified_name,
                        h.declared_at
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(groups.into_values().collect())
    } else {
        Err(Error::Registry(problems.join("\n")))
    }
}

/// Problems that do not depend on routing: duplicate names, empty names.
fn problems(handlers: &[HandlerSpec]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, &HandlerSpec> = HashMap::new();
    for h in handlers {
        if let Some(first) = seen.insert(&h.qualified_name, h) {
            problems.push(format!(
                "handler `{}` is registered twice ({} and {})",
                h.qualified_name, first.declared_at, h.declared_at
            ));
        }
        if h.topics.is_empty() {
            problems.push(format!("handler `{}` has no topic", h.qualified_name));
        }
        for topic in &h.topics {
            if topic.trim().is_empty() {
                problems.push(format!(
                    "handler `{}` has an empty topic name",
                    h.qualified_name
                ));
            } else if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!(
                    "handler `{}` has a topic with white space: `{topic}`",
                    h.qualified_name
                ));
            }
        }
        if h.group.trim().is_empty() {
            problems.push(format!("handler `{}` has an empty group", h.qualified_name));
        }
    }
    problems
}

/// Lints the handlers as `consumer check` does; an empty list means no problems.
pub fn check(handlers: &[HandlerSpec]) -> Vec<String> {
    match plan(handlers) {
        Ok(_) => Vec::new(),
        Err(Error::Registry(text)) => text.lines().map(str::to_owned).collect(),
        Err(other) => vec![other.to_string()],
    }
}
