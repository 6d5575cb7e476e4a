//! The contract every broker implements, and the registry of broker factories by name.
//!
//! Trait methods return [`BoxFuture`]s rather than `impl Future`: the broker is chosen by
//! configuration at run time and held as `Arc<dyn Broker>`, which `impl Future` in traits
//! does not allow. The cost is one allocation per call; the hot paths (`next_batch`) take
//! many messages per call.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{BrokerError, Error};
use crate::handler::BoxFuture;
use crate::lag::LagRow;
use crate::message::{Message, OutgoingMessage};
use crate::reply::ReplyInbox;

/// A message broker: publishes with acknowledgement and hands out consumers.
pub trait Broker: Send + Sync + 'static {
    /// The name it is registered under (`memory`, `disabled`, or a broker crate's: `kafka`,
    /// `rabbitmq`, `redis`).
    fn name(&self) -> &'static str;

    /// Publishes one message and resolves once the broker has acknowledged it (publisher
    /// confirm, delivery report, `XADD` reply). An error means it may not have been stored.
    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Joins `subscription.group` on its topics. Instances of one group share the messages;
    /// every group gets every message.
    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>>;

    /// Makes sure these topics exist and keep what is published to them even with no consumer
    /// yet (dead-letter topics are declared this way at start-up). Default: nothing to do.
    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let _ = topics;
        Box::pin(async { Ok(()) })
    }

    /// Reads up to `limit` messages of `topic` from its beginning without consuming them
    /// (`consumer dlq list`). Default: unsupported.
    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        let _ = (topic, limit);
        let broker = self.name();
        Box::pin(async move {
            Err(BrokerError::Unsupported {
                broker,
                operation: "browse",
            })
        })
    }

    /// How long the broker lets a consumer hold a delivered message unacknowledged before it
    /// takes it back (RabbitMQ's `consumer_timeout`); `None` when it never does. Retries are
    /// in-process and hold the message meanwhile, so the runtime refuses to start a handler
    /// whose declared retries could hold one longer. Default: `None`.
    fn max_unacknowledged(&self) -> Option<Duration> {
        None
    }

    /// Takes the records of the dead-letter topic `topic` that are waiting now, oldest first,
    /// at most `limit` of them, for `consumer dlq replay`. What is published to `topic`
    /// afterwards is not part of the snapshot, so a replay ends even while handlers keep
    /// dead-lettering. It must not wait on a group join. Default: unsupported.
    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        let _ = (topic, limit);
        let broker = self.name();
        Box::pin(async move {
            Err(BrokerError::Unsupported {
                broker,
                operation: "dlq replay",
            })
        })
    }

    /// Opens this instance's reply inbox for request-reply (see [`crate::reply`]). Called
    /// once, at the first request, and again if the inbox closes. Nothing it makes may grow
    /// while the instance is idle or after it is gone. Default: unsupported.
    fn open_replies(&self) -> BoxFuture<'_, Result<ReplyInbox, BrokerError>> {
        let broker = self.name();
        Box::pin(async move {
            Err(BrokerError::Unsupported {
                broker,
                operation: "request-reply",
            })
        })
    }

    /// Publishes a reply: `reply.topic` is the address the request carried in
    /// `x-reply-to`, and the reply carries `x-correlation-id` and `x-reply-kind`. Resolves
    /// once the broker has acknowledged it. Default: [`Broker::publish`] to that topic.
    fn publish_reply(&self, reply: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.publish(reply)
    }

    /// How far `group` is behind on `topics`: one row per topic, or per partition where
    /// there are partitions, for what exists (a topic the broker does not have, or a group
    /// it never saw there, has no row). `lag` counts what the group has not acknowledged
    /// yet, `pending` the part of it delivered and unacknowledged (see [`crate::lag`]). It
    /// must not join the group, so it works whether or not a member runs. Default:
    /// unsupported.
    fn lag<'a>(
        &'a self,
        group: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<LagRow>, BrokerError>> {
        let _ = (group, topics);
        let broker = self.name();
        Box::pin(async move {
            Err(BrokerError::Unsupported {
                broker,
                operation: "consumer lag",
            })
        })
    }

    /// Sends whatever the client buffers, waiting up to `timeout`. Default: nothing buffered.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        let _ = timeout;
        Box::pin(async { Ok(()) })
    }
}

/// Where a new group starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// Only messages published after the group was created (Redis `$`, Kafka `latest`).
    #[default]
    Latest,
    /// Everything the broker still holds (`--from-beginning`).
    Earliest,
}

/// What to consume.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The consumer group.
    pub group: String,
    /// Its topics.
    pub topics: Vec<String>,
    /// Where a new group starts.
    pub start: StartFrom,
    /// How many unacknowledged messages this consumer may hold (AMQP prefetch, batch size).
    pub prefetch: usize,
}

/// The records a [`Broker::dlq_snapshot`] took from a dead-letter topic.
pub trait DlqSnapshot: Send {
    /// The records, oldest first.
    fn records(&self) -> &[Message];

    /// Ends the replay. The records at these indexes of [`DlqSnapshot::records`] were
    /// re-published: they leave the DLQ (removed, or passed over so that neither
    /// `dlq list` nor a later replay sees them again). Every other record stays in the DLQ
    /// and is still listed: a replay never destroys a record it did not re-publish.
    fn settle(self: Box<Self>, replayed: Vec<usize>)
    -> BoxFuture<'static, Result<(), BrokerError>>;
}

/// Whether a group member is consuming, and what has been going wrong with it since when;
/// shared by the broker's consumer, the dispatcher and `/health/ready`. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug, Default)]
struct ReadinessState {
    ready: AtomicBool,
    /// Made with [`Readiness::pending`]: the broker logs when the member starts consuming.
    announced_by_broker: bool,
    /// Whether `problems` holds anything: checked without the lock on the hot path.
    troubled: AtomicBool,
    problems: Mutex<Vec<Problem>>,
}

#[derive(Debug)]
struct Problem {
    what: &'static str,
    since: Instant,
    message: String,
}

impl Readiness {
    /// A member that is consuming from the start (its queue or group exists once
    /// `subscribe` returns).
    pub fn ready() -> Self {
        let readiness = Self::default();
        readiness.set_ready(true);
        readiness
    }

    /// A member that becomes ready later (a Kafka member once partitions are assigned); the
    /// broker logs when it starts consuming.
    pub fn pending() -> Self {
        Self(Arc::new(ReadinessState {
            announced_by_broker: true,
            ..ReadinessState::default()
        }))
    }

    /// Whether the broker logs when this member starts consuming (else the runtime does).
    pub fn announced_by_broker(&self) -> bool {
        self.0.announced_by_broker
    }

    /// Records whether the member is consuming.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the member is consuming.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Relaxed)
    }

    /// Records that `what` (`fetch`, `dlq`, `subscribe` …) is failing. The first report of
    /// a run of failures sets the time it began; later ones update the message.
    pub fn report(&self, what: &'static str, message: impl std::fmt::Display) {
        let mut problems = self
            .0
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let message = message.to_string();
        match problems.iter_mut().find(|p| p.what == what) {
            Some(problem) => problem.message = message,
            None => problems.push(Problem {
                what,
                since: Instant::now(),
                message,
            }),
        }
        self.0.troubled.store(true, Ordering::Relaxed);
    }

    /// Records that `what` works again.
    pub fn clear(&self, what: &'static str) {
        if !self.0.troubled.load(Ordering::Relaxed) {
            return;
        }
        let mut problems = self
            .0
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        problems.retain(|p| p.what != what);
        self.0
            .troubled
            .store(!problems.is_empty(), Ordering::Relaxed);
    }

    /// The problems that have lasted at least `threshold`, as `what: message (for 42s)`.
    pub fn problems_older_than(&self, threshold: Duration) -> Vec<String> {
        if !self.0.troubled.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let problems = self
            .0
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        problems
            .iter()
            .filter(|p| p.since.elapsed() >= threshold)
            .map(|p| {
                format!(
                    "{} failing for {}s: {}",
                    p.what,
                    p.since.elapsed().as_secs(),
                    p.message
                )
            })
            .collect()
    }
}

/// One member of a group. Dropping it without acknowledging returns its messages to the group.
pub trait Consumer: Send {
    /// Whether this member is consuming (partitions assigned, queue bound, group created).
    /// Default: ready once `subscribe` returned it.
    fn readiness(&self) -> Readiness {
        Readiness::ready()
    }

    /// Waits for at least one message and returns up to `max`. Must be cancel-safe: a future
    /// dropped before it resolves loses no message (it may be redelivered). An error is
    /// transient: the caller waits and calls again, and the consumer reconnects by itself;
    /// except [`BrokerError::ClientDead`]: the caller then closes this consumer and
    /// subscribes again (with back-off), as for a client that cannot recover.
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>>;

    /// A handle that acknowledges what this consumer delivered, usable from other tasks
    /// while `next_batch` runs.
    fn acker(&self) -> Arc<dyn Acker>;

    /// Leaves the group cleanly once in-flight messages are settled (commits offsets).
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Acknowledges delivered messages: the one acknowledgement contract of every broker.
///
/// The runtime acknowledges a message only after its handler succeeded or its DLQ record was
/// confirmed. It gathers the messages a lane settles in a row and acknowledges them with one
/// [`Acker::ack_batch`], at the latest about a millisecond after the first (see `dispatch`):
/// batching is done there, once, and a broker only makes a batch cheap (one lock, one
/// command). A message is identified by what its broker put in it (its
/// [`Message::position`] and [`Message::receipt`]), never by where it lives in memory.
pub trait Acker: Send + Sync {
    /// Marks `message` done: it will not be delivered to this group again.
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Acknowledges `messages`, in the order given. Every message that can be is
    /// acknowledged; the first failure is returned. By default one [`Acker::ack`] after
    /// another; a broker that can acknowledge many at once overrides it.
    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut outcome = Ok(());
            for message in messages {
                let result = self.ack(message).await;
                if outcome.is_ok() {
                    outcome = result;
                }
            }
            outcome
        })
    }
}

/// [`Acker::ack_batch`] for a broker whose acknowledgement of one message is done at once,
/// with nothing to wait for (it records it, or queues it for a task of its own): `ack` for
/// each message. Every message that can be is acknowledged; the first failure is reported.
pub fn ack_each(
    messages: &[Arc<Message>],
    ack: impl Fn(&Message) -> Result<(), BrokerError>,
) -> BoxFuture<'static, Result<(), BrokerError>> {
    let outcome = messages
        .iter()
        .map(|message| ack(message))
        .fold(Ok(()), Result::and);
    Box::pin(std::future::ready(outcome))
}

/// What a [`BrokerFactory`] runs: one connection attempt with this configuration. The broker
/// reads its own variables from [`Config::settings`], and the framework's (retry settings,
/// service name) from the rest of `config`.
pub type ConnectFn = fn(&Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>>;

/// What a [`BrokerFactory`] names as what it connects to in the connection loop's log lines
/// and errors: an address, a URL with its password masked. It must not fail: a setting that
/// does not parse is shown as given (masked), and reported by the connection attempt.
pub type TargetFn = fn(&Config) -> String;

/// What a [`BrokerFactory`] runs to check its settings without connecting (`consumer check`):
/// the [`BrokerError::Config`] a connection attempt would end with at once, if any.
pub type CheckFn = fn(&Config) -> Result<(), BrokerError>;

/// What a [`BrokerFactory`] adds about a topic in listings (`consumer list`), such as what
/// the topic is called on that broker; `None` when there is nothing to add.
pub type TopicNoteFn = fn(&Config, &str) -> Option<String>;

/// The part of the AsyncAPI document (`consumer asyncapi`) a [`BindingsFn`] is asked about.
/// Topics are as the broker sees them (overrides applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindingOf<'a> {
    /// The server: the configured broker.
    Server,
    /// The channel of `topic`; `kept` for a dead-letter topic, which the runtime declares so
    /// that it keeps its records with no consumer ([`Broker::declare_topics`]).
    Channel {
        /// The topic.
        topic: &'a str,
        /// Whether it is a kept (dead-letter) topic.
        kept: bool,
    },
    /// A handler's receive operation: `group` reads `topic`.
    Receive {
        /// The topic.
        topic: &'a str,
        /// The consumer group.
        group: &'a str,
    },
    /// A send operation to `topic`.
    Send {
        /// The topic.
        topic: &'a str,
    },
}

/// What a [`BrokerFactory`] says about `of` in the AsyncAPI document: a bindings object keyed
/// by protocol (`{"kafka": {"groupId": …, "bindingVersion": "0.5.0"}}`), or `None` for none.
/// It must not fail or connect: a setting that does not parse gives no bindings.
pub type BindingsFn = fn(&Config, BindingOf<'_>) -> Option<serde_json::Value>;

/// A broker that can be selected by name. Broker crates submit one with `inventory`, which
/// is all it takes for `MESSAGING_BACKEND=<name>` to select it: core knows no broker by name.
///
/// ```
/// # use std::sync::Arc;
/// # use messaging_core::{Broker, BrokerFactory, Config, MemoryBroker};
/// fn connect(config: &Config) -> messaging_core::BoxFuture<'_, Result<Arc<dyn Broker>, messaging_core::BrokerError>> {
///     // A real broker reads `config.settings.get_required("queue", "QUEUE_URL")` here.
///     Box::pin(async { Ok(Arc::new(MemoryBroker::new()) as Arc<dyn Broker>) })
/// }
///
/// fn target(config: &Config) -> String {
///     config.settings.get("QUEUE_URL").map_or("localhost".to_owned(), messaging_core::config::mask_url)
/// }
///
/// fn check(config: &Config) -> Result<(), messaging_core::BrokerError> {
///     config.settings.get_required("queue", "QUEUE_URL").map(drop)
/// }
///
/// inventory::submit! {
///     BrokerFactory::new("queue", connect)
///         .variables(&["QUEUE_"])
///         .target(target)
///         .check(check)
/// }
/// ```
pub struct BrokerFactory {
    name: &'static str,
    connect: ConnectFn,
    variables: &'static [&'static str],
    target: TargetFn,
    check: CheckFn,
    topic_note: Option<TopicNoteFn>,
    bindings: BindingsFn,
}

impl BrokerFactory {
    /// A broker selected as `name`, connected by `connect`; it reads no variables and names
    /// itself (`name`) in the connection loop's logs.
    pub const fn new(name: &'static str, connect: ConnectFn) -> Self {
        Self {
            name,
            connect,
            variables: &[],
            target: name_only,
            check: nothing_to_check,
            topic_note: None,
            bindings: no_bindings,
        }
    }

    /// The prefixes of the environment variables this broker reads (`&["KAFKA_"]`): those
    /// are captured into [`Config::settings`] by [`Config::from_env`].
    pub const fn variables(mut self, prefixes: &'static [&'static str]) -> Self {
        self.variables = prefixes;
        self
    }

    /// What the connection loop names as this broker's address (see [`TargetFn`]).
    pub const fn target(mut self, target: TargetFn) -> Self {
        self.target = target;
        self
    }

    /// How `consumer check` finds a setting that can never work, without connecting (see
    /// [`CheckFn`]). Default: nothing to check.
    pub const fn check(mut self, check: CheckFn) -> Self {
        self.check = check;
        self
    }

    /// What `consumer list` shows beside a topic (see [`TopicNoteFn`]). Default: nothing.
    pub const fn topic_note(mut self, note: TopicNoteFn) -> Self {
        self.topic_note = Some(note);
        self
    }

    /// What this broker adds to the AsyncAPI document: the protocol bindings of its server,
    /// channels and operations (see [`BindingsFn`]). Default: none.
    pub const fn bindings(mut self, bindings: BindingsFn) -> Self {
        self.bindings = bindings;
        self
    }

    /// The name `MESSAGING_BACKEND` selects it by.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One connection attempt with `config`.
    pub fn connect<'a>(
        &self,
        config: &'a Config,
    ) -> BoxFuture<'a, Result<Arc<dyn Broker>, BrokerError>> {
        (self.connect)(config)
    }

    /// What this broker connects to as `config` says, masked for logs.
    pub fn describe(&self, config: &Config) -> String {
        (self.target)(config)
    }

    /// What this broker adds about `topic` in listings, as `config` says.
    pub fn note_topic(&self, config: &Config, topic: &str) -> Option<String> {
        self.topic_note.and_then(|note| note(config, topic))
    }

    /// The setting of `config` that can never work for this broker, found without
    /// connecting.
    pub fn check_settings(&self, config: &Config) -> Result<(), BrokerError> {
        (self.check)(config)
    }

    /// The AsyncAPI bindings of `of` under `config` (see [`BindingsFn`]).
    pub fn bindings_of(&self, config: &Config, of: BindingOf<'_>) -> Option<serde_json::Value> {
        (self.bindings)(config, of)
    }
}

fn name_only(config: &Config) -> String {
    config.backend.clone()
}

fn nothing_to_check(_config: &Config) -> Result<(), BrokerError> {
    Ok(())
}

fn no_bindings(_config: &Config, _of: BindingOf<'_>) -> Option<serde_json::Value> {
    None
}

impl std::fmt::Debug for BrokerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerFactory")
            .field("name", &self.name)
            .field("variables", &self.variables)
            .finish_non_exhaustive()
    }
}

inventory::collect!(BrokerFactory);

/// The names of the brokers linked into this binary, sorted.
pub fn linked_backends() -> Vec<&'static str> {
    let mut names: Vec<_> = inventory::iter::<BrokerFactory>
        .into_iter()
        .map(|f| f.name)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The variable prefixes the linked brokers read, for [`Config::from_env`].
pub(crate) fn setting_prefixes() -> Vec<&'static str> {
    inventory::iter::<BrokerFactory>
        .into_iter()
        .flat_map(|f| f.variables.iter().copied())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The factory `MESSAGING_BACKEND=name` selects.
pub fn factory(name: &str) -> Result<&'static BrokerFactory, Error> {
    inventory::iter::<BrokerFactory>
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| Error::UnknownBackend {
            name: name.to_owned(),
            linked: linked_backends(),
        })
}

/// One attempt to connect to the configured broker.
pub async fn connect_once(config: &Config) -> Result<Arc<dyn Broker>, Error> {
    let factory = factory(&config.backend)?;
    match factory.connect(config).await {
        Ok(broker) => Ok(broker),
        Err(BrokerError::Config {
            variable, message, ..
        }) => Err(Error::Config {
            key: variable,
            message,
        }),
        Err(error) => Err(error.into()),
    }
}

/// The connection loop's state, as `/health` reports it.
#[derive(Debug, Default)]
pub struct ConnectionState {
    connected: AtomicBool,
    in_cooldown: AtomicBool,
    retry_count: AtomicU32,
    groups: Mutex<Vec<(String, Readiness)>>,
}

impl ConnectionState {
    /// Whether the broker is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Whether the loop is in its cooldown.
    pub fn in_cooldown(&self) -> bool {
        self.in_cooldown.load(Ordering::Relaxed)
    }
    /// Failed attempts so far.
    pub fn retry_count(&self) -> u32 {
        self.retry_count.load(Ordering::Relaxed)
    }
    /// Records whether the broker is reachable (consumers report lost connections here).
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }
    /// Counts a failed attempt to reach the broker.
    pub fn record_failure(&self) {
        self.retry_count.fetch_add(1, Ordering::Relaxed);
    }
    /// Sets the readiness `/health/ready` reports for `group` (replacing an earlier one).
    pub fn set_group(&self, group: &str, readiness: Readiness) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        match groups.iter_mut().find(|(name, _)| name == group) {
            Some((_, slot)) => *slot = readiness,
            None => groups.push((group.to_owned(), readiness)),
        }
    }
    /// The groups this process consumes with, and their readiness.
    pub fn groups(&self) -> Vec<(String, Readiness)> {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Connects, trying `connect_max_retries` times `connect_retry_delay` apart. Then, with
/// `forever`, cools down for `connect_cooldown` and starts again, for ever (the `consumer`
/// command waits for its broker); without, it returns the last error, so that a library
/// user is told rather than left waiting in silence. A configuration error (an unknown
/// backend, a setting the broker reports as one that can never work) ends it at once.
pub async fn connect_with_retry(
    config: &Config,
    state: &ConnectionState,
    forever: bool,
) -> Result<Arc<dyn Broker>, Error> {
    let factory = factory(&config.backend)?;
    let target = factory.describe(config);
    let per_round = config.connect_max_retries.max(1);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        tracing::info!(backend = factory.name, %target, "Connecting… (attempt {attempt}/{per_round})");
        match factory.connect(config).await {
            Ok(broker) => {
                state.set_connected(true);
                state.in_cooldown.store(false, Ordering::Relaxed);
                tracing::info!(backend = factory.name, %target, "Connected");
                return Ok(broker);
            }
            Err(BrokerError::Config {
                variable, message, ..
            }) => {
                return Err(Error::Config {
                    key: variable,
                    message,
                });
            }
            Err(error) => {
                state.set_connected(false);
                state.record_failure();
                tracing::warn!(backend = factory.name, %error, "connection attempt {attempt}/{per_round} failed");
                if attempt < per_round {
                    tokio::time::sleep(config.connect_retry_delay).await;
                } else if forever {
                    tracing::warn!("Cooling down for {:?}", config.connect_cooldown);
                    state.in_cooldown.store(true, Ordering::Relaxed);
                    tokio::time::sleep(config.connect_cooldown).await;
                    state.in_cooldown.store(false, Ordering::Relaxed);
                    attempt = 0;
                } else {
                    // The broker's own error without its `<broker>: connection failed:` prefix,
                    // which the returned one carries.
                    let cause = match &error {
                        BrokerError::Connection { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    let tried = match attempt {
                        1 => "1 attempt".to_owned(),
                        n => format!(
                            "{n} attempts {} apart",
                            humantime::format_duration(config.connect_retry_delay)
                        ),
                    };
                    return Err(BrokerError::connection(
                        factory.name,
                        format!(
                            "{target} unreachable after {tried} (MESSAGING_CONNECT_MAX_RETRIES, \
                             MESSAGING_CONNECT_RETRY_DELAY; `RuntimeBuilder::retry_forever` \
                             waits for ever): {cause}"
                        ),
                    )
                    .into());
                }
            }
        }
    }
}
