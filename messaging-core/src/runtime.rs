//! The runtime: builds the routing plan, subscribes one consumer per group and runs the
//! dispatchers until shutdown.

use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, ConnectionState, Consumer, Readiness, StartFrom, Subscription, connect_with_retry,
};
use crate::config::{Config, try_current_config};
use crate::dispatch::{Dispatcher, Route, Stopped, Target};
use crate::error::Error;
use crate::extract::Context;
use crate::metrics::{HandlerMetrics, metrics};
use crate::producer::{Producer, install_producer};
use crate::registry::{HandlerSpec, TopicRoute, plan, registered_handlers, retry_topic};

type AnyArc = Arc<dyn Any + Send + Sync>;

/// Configures and starts a [`Runtime`].
pub struct RuntimeBuilder {
    config: Option<Config>,
    broker: Option<Arc<dyn Broker>>,
    connection: Arc<ConnectionState>,
    states: HashMap<TypeId, AnyArc>,
    include_registered: bool,
    handlers: Vec<HandlerSpec>,
    topics: Option<Vec<String>>,
    group: Option<String>,
    concurrency: Option<usize>,
    batch_size: usize,
    start: StartFrom,
    shutdown_timeout: Duration,
    install_global_producer: Option<bool>,
    retry_forever: bool,
    idempotency_store: Option<Arc<dyn crate::idempotency::IdempotencyStore>>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            config: None,
            broker: None,
            connection: Arc::default(),
            states: HashMap::new(),
            include_registered: true,
            handlers: Vec::new(),
            topics: None,
            group: None,
            concurrency: None,
            batch_size: 256,
            start: StartFrom::Latest,
            shutdown_timeout: Duration::from_secs(30),
            install_global_producer: None,
            retry_forever: false,
            idempotency_store: None,
        }
    }
}

impl RuntimeBuilder {
    /// Uses this configuration instead of the one in force.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Uses this broker instead of connecting to the configured one.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Registers a value for `State<T>` extractors (and `#[consumer]` instances, which are
    /// otherwise made with `Default`).
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// [`RuntimeBuilder::state`] with a value the caller keeps a handle to (tests inspect it).
    pub fn state_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.states.insert(TypeId::of::<T>(), value);
        self
    }

    /// Adds a handler built in code.
    pub fn handler(mut self, spec: HandlerSpec) -> Self {
        self.handlers.push(spec);
        self
    }

    /// Leaves out the handlers registered with the macros; only those added with
    /// [`RuntimeBuilder::handler`] run.
    pub fn without_registered(mut self) -> Self {
        self.include_registered = false;
        self
    }

    /// Runs only the handlers of these topics (`consumer --topic`). An unknown topic fails
    /// the start with the list of registered ones.
    pub fn topics<I: IntoIterator<Item = S>, S: Into<String>>(mut self, topics: I) -> Self {
        self.topics = Some(topics.into_iter().map(Into::into).collect());
        self
    }

    /// Puts every handler in this group (`consumer --group`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// First attempts running at once per group; order is kept per key. A message waiting
    /// out a back-off holds back only its key and does not count here: its retries run on
    /// their own.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency.max(1));
        self
    }

    /// How many messages to fetch at a time.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// New groups start from the oldest message the broker holds.
    pub fn from_beginning(mut self, yes: bool) -> Self {
        self.start = if yes {
            StartFrom::Earliest
        } else {
            StartFrom::Latest
        };
        self
    }

    /// How long shutdown waits for in-flight handlers.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether `get_producer()` and `#[event]` should publish through this runtime's broker
    /// (default: yes when the broker comes from configuration).
    pub fn install_global_producer(mut self, yes: bool) -> Self {
        self.install_global_producer = Some(yes);
        self
    }

    /// Whether [`RuntimeBuilder::start`] waits for an unreachable broker for ever: rounds of
    /// `connect_max_retries` attempts with `connect_cooldown` between them (the `consumer`
    /// command does this). Default: no, `start` returns the error after one round, so a
    /// service that links the library is told instead of waiting in silence.
    pub fn retry_forever(mut self, yes: bool) -> Self {
        self.retry_forever = yes;
        self
    }

    /// Keeps idempotent handlers' keys in `store` instead of the configured one
    /// (`MESSAGING_IDEMPOTENCY_STORE`).
    pub fn idempotency_store(
        mut self,
        store: Arc<dyn crate::idempotency::IdempotencyStore>,
    ) -> Self {
        self.idempotency_store = Some(store);
        self
    }

    /// Shares the connection state (for `/health`).
    pub fn connection_state(mut self, state: Arc<ConnectionState>) -> Self {
        self.connection = state;
        self
    }

    /// The handlers this builder would run, after `--topic` and `--group`.
    pub fn selected_handlers(&self) -> Result<Vec<HandlerSpec>, Error> {
        let mut handlers = if self.include_registered {
            registered_handlers()
        } else {
            Vec::new()
        };
        handlers.extend(self.handlers.iter().cloned());
        // Topics as this environment names them (MESSAGING_TOPIC_<NAME>).
        let config = match &self.config {
            Some(config) => config.clone(),
            None => try_current_config()?,
        };
        for h in &mut handlers {
            for topic in &mut h.topics {
                *topic = config.resolve_topic(topic).to_owned();
            }
        }
        let wanted: Option<Vec<String>> = self.topics.as_ref().map(|topics| {
            topics
                .iter()
                .map(|t| config.resolve_topic(t).to_owned())
                .collect()
        });
        if let Some(wanted) = &wanted {
            let known: BTreeSet<&str> = handlers
                .iter()
                .flat_map(|h| h.topics.iter().map(String::as_str))
                .collect();
            let unknown: Vec<&str> = wanted
                .iter()
                .map(String::as_str)
                .filter(|t| !known.contains(t))
                .collect();
            if !unknown.is_empty() {
                return Err(Error::Config {
                    key: "--topic".to_owned(),
                    message: format!(
                        "no handler for {}; registered topics: {}",
                        unknown.join(", "),
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            handlers = handlers
                .into_iter()
                .filter_map(|mut h| {
                    h.topics.retain(|t| wanted.contains(t));
                    (!h.topics.is_empty()).then_some(h)
                })
                .collect();
        }
        if let Some(group) = &self.group {
            for h in &mut handlers {
                h.group = group.clone();
            }
        }
        Ok(handlers)
    }

    /// What `handlers` need from `State<T>` that was not registered, as "`handler` needs
    /// `State<T>`" (a `#[consumer]` type's own instance counts as registered).
    pub fn missing_states(&self, handlers: &[HandlerSpec]) -> Vec<String> {
        let made: BTreeSet<TypeId> = handlers
            .iter()
            .filter_map(|h| h.instance.map(|make| make().0))
            .collect();
        handlers
            .iter()
            .flat_map(|h| {
                h.requires
                    .iter()
                    .filter(|r| !self.states.contains_key(&r.type_id) && !made.contains(&r.type_id))
                    .map(move |r| format!("`{}` needs `State<{}>`", h.qualified_name, r.type_name))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Connects (with the retry loop when the broker comes from configuration), checks the
    /// handlers, subscribes every group and starts dispatching.
    ///
    /// A broker that cannot be reached after `connect_max_retries` attempts fails the start
    /// with [`Error::Broker`], unless [`RuntimeBuilder::retry_forever`] was asked for.
    pub async fn start(self) -> Result<Runtime, Error> {
        let config = match self.config.clone() {
            Some(config) => config,
            None => try_current_config()?,
        };
        let handlers = self.selected_handlers()?;
        let plans = plan(&handlers)?;

        let missing = self.missing_states(&handlers);
        if !missing.is_empty() {
            return Err(Error::Registry(format!(
                "{}; register the values with `.state(value)` before starting",
                missing.join(", ")
            )));
        }
        let mut states = self.states;
        for h in &handlers {
            if let Some(make) = h.instance {
                let (id, value) = make();
                states.entry(id).or_insert(value);
            }
        }

        let from_config = self.broker.is_none();
        let broker = match self.broker {
            Some(broker) => broker,
            None => connect_with_retry(&config, &self.connection, self.retry_forever).await?,
        };
        self.connection.set_connected(true);
        metrics().set_backend(broker.name());
        if let Some(limit) = broker.max_unacknowledged() {
            check_hold(&handlers, limit, broker.name())?;
        }
        let producer = Producer::new(Arc::clone(&broker), config.clone());
        if self.install_global_producer.unwrap_or(from_config) {
            install_producer(producer.clone());
        }
        let context = Arc::new(Context::new(states, producer.clone()));

        let dlq_topics: Vec<String> = handlers
            .iter()
            .flat_map(|h| h.topics.iter().map(|t| h.dlq_topic_in(t, &config)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        broker.declare_topics(&dlq_topics).await?;

        // Connected only when a handler needs it.
        let idempotency_store = match self.idempotency_store {
            _ if !handlers.iter().any(|h| h.idempotent) => None,
            Some(store) => Some(store),
            None => Some(crate::idempotency::connect_store(&config.idempotency).await?),
        };
        let shutdown = CancellationToken::new();
        let specs: Vec<Arc<HandlerSpec>> = handlers.into_iter().map(Arc::new).collect();
        let mut tasks = JoinSet::new();
        let mut joining = Vec::new();
        let mut handler_metrics = Vec::new();
        let concurrency = self.concurrency.unwrap_or(config.concurrency).max(1);
        let mut lag_groups = Vec::new();
        for group in plans {
            let mut target = |index: usize, topic: &str| {
                let spec = Arc::clone(&specs[index]);
                let m = metrics().register_handler(topic, &spec.qualified_name, concurrency);
                handler_metrics.push((spec.name.to_owned(), Arc::clone(&m)));
                let idempotency =
                    idempotency_store
                        .as_ref()
                        .filter(|_| spec.idempotent)
                        .map(|store| {
                            Arc::new(crate::idempotency::Guard {
                                store: Arc::clone(store),
                                ttl: config.idempotency.ttl,
                                // The key is held while the handler may still run.
                                lease: spec.retry.timeout.map_or(config.idempotency.lease, |t| {
                                    config.idempotency.lease.max(t * 2)
                                }),
                            })
                        });
                Arc::new(Target {
                    dlq_topic: spec.dlq_topic_in(topic, &config),
                    spec,
                    metrics: m,
                    idempotency,
                })
            };
            let routes = group
                .routes
                .iter()
                .map(|(topic, route)| {
                    let route = match route {
                        TopicRoute::Single(i) => Route::Single(target(*i, topic)),
                        TopicRoute::ByEvent { envelope, handlers } => Route::ByEvent {
                            envelope: *envelope,
                            targets: handlers
                                .iter()
                                .map(|(name, i)| (name.clone(), target(*i, topic)))
                                .collect(),
                        },
                    };
                    (topic.clone(), route)
                })
                .collect::<Vec<_>>();
            // Handlers with `retry_topics` also read their delay topics, routed as the
            // original topic (its handlers, counters and DLQ).
            let mut topics = group.topics.clone();
            let mut routes = routes;
            let delayed: Vec<(String, Route)> = routes
                .iter()
                .flat_map(|(topic, route)| {
                    let retries = route
                        .targets()
                        .filter(|t| t.spec.retry_topics)
                        .map(|t| t.spec.retry.max_retries)
                        .max()
                        .unwrap_or(0);
                    (1..=retries).map(move |n| (retry_topic(topic, n), route.clone()))
                })
                .collect();
            for (topic, route) in delayed {
                topics.push(topic.clone());
                routes.push((topic, route));
            }
            let subscription = Subscription {
                group: group.group.clone(),
                topics,
                start: self.start,
                prefetch: self.batch_size.max(concurrency),
            };
            lag_groups.push((subscription.group.clone(), subscription.topics.clone()));
            let dispatcher = DispatcherParts {
                group: group.group,
                routes,
                context: Arc::clone(&context),
                broker: Arc::clone(&broker),
                source: config.source.clone(),
                concurrency,
                batch_size: self.batch_size,
                max_message_size: config.max_message_size,
                shutdown: shutdown.clone(),
                connection: Arc::clone(&self.connection),
            };
            // Not ready until its consumer is: `/health/ready` waits for every group.
            self.connection
                .set_group(&subscription.group, Readiness::pending());
            joining.push((subscription, dispatcher));
        }
        // All at once: a group join can take seconds (a Kafka member waits for its
        // assignment), and one after the other they would add up.
        let joined = futures::future::join_all(
            joining
                .iter()
                .map(|(subscription, _)| broker.subscribe(subscription.clone())),
        )
        .await;
        for ((subscription, dispatcher), result) in joining.into_iter().zip(joined) {
            match result {
                Ok(consumer) => {
                    // Known to `/health/ready` before the task first runs.
                    self.connection
                        .set_group(&dispatcher.group, consumer.readiness());
                    tasks.spawn(dispatcher.run(consumer, subscription));
                }
                // One group that cannot subscribe (a key of the wrong type, a queue that
                // cannot be declared) does not stop the others: it is reported and retried.
                Err(error) if !error.is_config() => {
                    tracing::error!(group = %subscription.group, topics = ?subscription.topics, %error, "cannot subscribe; retrying in the background");
                    let readiness = Readiness::pending();
                    readiness.report("subscribe", &error);
                    self.connection
                        .set_group(&subscription.group, readiness.clone());
                    tasks.spawn(dispatcher.subscribe_and_run(subscription, readiness));
                }
                Err(error) => return Err(error.into()),
            }
        }
        // In the set, so that it stops with the dispatchers, or when the runtime is dropped.
        if !lag_groups.is_empty() {
            tasks.spawn(crate::lag::refresh(
                Arc::clone(&broker),
                lag_groups,
                config.lag.interval,
                shutdown.clone(),
            ));
        }
        Ok(Runtime {
            broker,
            producer,
            shutdown,
            tasks,
            shutdown_timeout: self.shutdown_timeout,
            handler_metrics,
            connection: self.connection,
        })
    }
}

/// Handlers running against a broker. Stop it with [`Runtime::shutdown`].
pub struct Runtime {
    broker: Arc<dyn Broker>,
    producer: Producer,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
    handler_metrics: Vec<(String, Arc<HandlerMetrics>)>,
    connection: Arc<ConnectionState>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("backend", &self.broker.name())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A builder with the registered handlers and the configuration in force.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The broker it runs on.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// A producer on the same broker.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The connection state.
    pub fn connection(&self) -> &Arc<ConnectionState> {
        &self.connection
    }

    /// Counters of the handler named `name` (function name, or `Type::method`), one per topic.
    pub fn handler_metrics(&self, name: &str) -> Vec<Arc<HandlerMetrics>> {
        self.handler_metrics
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, m)| Arc::clone(m))
            .collect()
    }

    /// A token that, once cancelled, starts the shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        tokio::select! {
            _ = signal => {}
            _ = self.shutdown.cancelled() => {}
            _ = wait_all(&mut self.tasks) => {}
        }
        self.shutdown().await
    }

    /// Stops fetching, lets in-flight handlers finish (up to the shutdown timeout) and
    /// acknowledge, closes the consumers and flushes pending publishes.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        let finished = tokio::time::timeout(self.shutdown_timeout, wait_all(&mut self.tasks)).await;
        if finished.is_err() {
            tracing::warn!(timeout = ?self.shutdown_timeout, "handlers still running at the shutdown timeout; their messages will be redelivered");
            self.tasks.abort_all();
        }
        self.producer.flush_within(self.shutdown_timeout).await?;
        Ok(())
    }
}

/// Refuses handlers whose retries could hold a message longer than the broker allows.
fn check_hold(handlers: &[HandlerSpec], limit: Duration, broker: &str) -> Result<(), Error> {
    let too_long: Vec<String> = handlers
        .iter()
        // Retry topics acknowledge at once; only in-process retries hold a message.
        .filter(|h| !h.retry_topics && h.retry.max_hold() >= limit)
        .map(|h| {
            format!(
                "`{}` can hold a message for {} in retries",
                h.qualified_name,
                humantime::format_duration(h.retry.max_hold())
            )
        })
        .collect();
    if too_long.is_empty() {
        return Ok(());
    }
    Err(Error::Registry(format!(
        "{}, but {broker} takes back a message unacknowledged for {}: shorten the retries \
         (max_retries, retry_delay, timeout) or raise the broker's limit",
        too_long.join(", "),
        humantime::format_duration(limit)
    )))
}

/// What a group's [`Dispatcher`] is made of, before its consumer exists.
struct DispatcherParts {
    group: String,
    routes: Vec<(String, Route)>,
    context: Arc<Context>,
    broker: Arc<dyn Broker>,
    source: String,
    concurrency: usize,
    batch_size: usize,
    max_message_size: usize,
    shutdown: CancellationToken,
    connection: Arc<ConnectionState>,
}

/// The first wait before subscribing again (after a failed subscription, or a consumer whose
/// client died); it doubles up to [`MAX_RESUBSCRIBE_WAIT`] while the attempts keep failing.
const FIRST_RESUBSCRIBE_WAIT: Duration = Duration::from_secs(1);
const MAX_RESUBSCRIBE_WAIT: Duration = Duration::from_secs(30);

/// A consumer that lived this long before its client died starts the back-off afresh; one
/// that died sooner (two members fencing each other in turn) makes the next wait longer.
const LIVED_LONG: Duration = Duration::from_secs(60);

impl DispatcherParts {
    /// Dispatches what `consumer` fetches until shutdown. A consumer whose client reports
    /// itself unusable is closed and replaced by a new one with the same subscription,
    /// after a back-off; `/health/ready` says why meanwhile.
    async fn run(self, consumer: Box<dyn Consumer>, subscription: Subscription) {
        let mut consumer = consumer;
        let mut wait = FIRST_RESUBSCRIBE_WAIT;
        loop {
            // Asked once: the default makes a new one per call.
            let (started, readiness) = (Instant::now(), consumer.readiness());
            if let Stopped::Shutdown = self.run_consumer(consumer, readiness.clone()).await {
                return;
            }
            if started.elapsed() >= LIVED_LONG {
                wait = FIRST_RESUBSCRIBE_WAIT;
            }
            let Some(next) = self
                .subscribe_again(&subscription, &readiness, &mut wait)
                .await
            else {
                return;
            };
            consumer = next;
        }
    }

    /// Dispatches what `consumer` fetches until shutdown or until its client dies.
    async fn run_consumer(&self, consumer: Box<dyn Consumer>, readiness: Readiness) -> Stopped {
        self.connection.set_group(&self.group, readiness.clone());
        if !readiness.announced_by_broker() {
            tracing::info!(group = %self.group, backend = self.broker.name(), "consuming");
        } else if !readiness.is_ready() {
            tracing::info!(group = %self.group, backend = self.broker.name(), "joining the group");
        }
        let dispatcher = Arc::new(Dispatcher {
            group: self.group.clone(),
            routes: self.routes.clone(),
            context: Arc::clone(&self.context),
            broker: Arc::clone(&self.broker),
            acker: consumer.acker(),
            source: self.source.clone(),
            concurrency: self.concurrency,
            batch_size: self.batch_size,
            max_message_size: self.max_message_size,
            // Its own: a dead consumer stops its dispatcher, not the runtime.
            shutdown: self.shutdown.child_token(),
            stopping: Default::default(),
            connection: Arc::clone(&self.connection),
            readiness,
            clock: crate::dispatch::handler_clock(),
        });
        dispatcher.run(consumer).await
    }

    /// Subscribes again and again, waiting `wait` before each attempt (doubled each time,
    /// up to [`MAX_RESUBSCRIBE_WAIT`]), until it works; `None` on shutdown. Failures are
    /// reported on `readiness`, the group's until a new consumer replaces it.
    async fn subscribe_again(
        &self,
        subscription: &Subscription,
        readiness: &Readiness,
        wait: &mut Duration,
    ) -> Option<Box<dyn Consumer>> {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(*wait) => {}
            }
            let waited = *wait;
            *wait = (*wait * 2).min(MAX_RESUBSCRIBE_WAIT);
            match self.broker.subscribe(subscription.clone()).await {
                Ok(consumer) => {
                    tracing::info!(group = %self.group, ?waited, "subscribed again");
                    return Some(consumer);
                }
                Err(error) => {
                    readiness.report("subscribe", &error);
                    tracing::warn!(group = %self.group, %error, wait = ?*wait, "cannot subscribe; retrying");
                }
            }
        }
    }

    /// Subscribes again and again, with back-off, until it works or shutdown; then runs.
    async fn subscribe_and_run(self, subscription: Subscription, readiness: Readiness) {
        let mut wait = FIRST_RESUBSCRIBE_WAIT;
        if let Some(consumer) = self
            .subscribe_again(&subscription, &readiness, &mut wait)
            .await
        {
            self.run(consumer, subscription).await;
        }
    }
}

async fn wait_all(tasks: &mut JoinSet<()>) {
    while let Some(result) = tasks.join_next().await {
        if let Err(error) = result
            && error.is_panic()
        {
            tracing::error!(%error, "a dispatcher task panicked");
        }
    }
}
