//! Consuming: one reader per queue and broker, shared by every subscription that reads the
//! queue (by default every task is in the queue `celery`, and every handler is a group of
//! its own), routing each task by its name to the subscriptions that map it.
//!
//! A task stays unacknowledged on the broker (a Redis processing list, an AMQP delivery)
//! until every subscription it was handed to has acknowledged it. A subscription that closes
//! (or is dropped) with tasks it has not acknowledged puts them back in their queue. At most
//! the first subscription's `prefetch` tasks of one queue are held at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use messaging_core::{
    Acker, BoxFuture, BrokerError, Consumer, Message, Position, Subscription, TopicName, TopicNames,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::amqp_transport::{self, AmqpTransport};
use crate::error::CeleryError;
use crate::protocol::{self, Incoming};
use crate::redis_transport::{self, RedisTransport};
use crate::settings::{CeleryOptions, TASKS_VARIABLE};

/// How many tasks one fetch takes at most.
const FETCH_MAX: usize = 100;

/// The transport of a broker.
#[derive(Clone)]
pub(crate) enum Link {
    Redis(Arc<RedisTransport>),
    Amqp(Arc<AmqpTransport>),
}

/// What acknowledges one task on its broker.
enum Token {
    /// The envelope exactly as taken into the processing list.
    Redis(Bytes),
    Amqp(lapin::Acker),
}

/// A task as a reader took it.
struct Raw {
    incoming: Incoming,
    token: Token,
    position: Position,
}

enum Reader {
    Redis(redis_transport::Reader),
    // Boxed: a lapin consumer is several times the size of a Redis connection.
    Amqp(Box<amqp_transport::Reader>),
}

impl Reader {
    async fn fetch(&mut self, max: usize) -> Result<Vec<Raw>, CeleryError> {
        match self {
            Self::Redis(reader) => Ok(reader
                .fetch(max)
                .await?
                .into_iter()
                .map(|raw| Raw {
                    incoming: redis_transport::parse_envelope(&raw),
                    token: Token::Redis(raw),
                    position: Position::Unknown,
                })
                .collect()),
            Self::Amqp(reader) => Ok(reader
                .fetch(max)
                .await?
                .into_iter()
                .map(|delivery| Raw {
                    incoming: delivery.incoming,
                    token: Token::Amqp(delivery.acker),
                    position: Position::DeliveryTag(delivery.tag),
                })
                .collect()),
        }
    }

    async fn close(self) {
        match self {
            Self::Redis(_) => {}
            Self::Amqp(reader) => reader.close().await,
        }
    }
}

/// An item of a subscription's channel.
enum Item {
    Message(Arc<Message>),
    /// The reader failed (it reconnects by itself).
    Failed(String),
}

/// One subscription attached to a queue's reader.
struct Sub {
    id: u64,
    /// The topic each task it maps is delivered on.
    tasks: HashMap<String, TopicName>,
    /// Where a task that cannot be decoded goes, so that it is dead-lettered.
    fallback: TopicName,
    tx: mpsc::UnboundedSender<Item>,
}

/// The reader of one queue and the subscriptions it serves.
struct Hub {
    queue: String,
    subs: Mutex<Vec<Sub>>,
    permits: Arc<Semaphore>,
    /// Stops the reader; `true` puts back what it took and no one holds.
    stop: Mutex<Option<oneshot::Sender<bool>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A task handed out and not yet acknowledged by every subscription it went to.
struct Inflight {
    queue: String,
    token: Token,
    waiting: Vec<u64>,
    _permit: OwnedSemaphorePermit,
}

/// The consuming state of one broker.
pub(crate) struct Shared {
    pub(crate) link: Link,
    pub(crate) options: Arc<CeleryOptions>,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    inflight: Mutex<HashMap<u64, Inflight>>,
    next_receipt: AtomicU64,
    next_sub: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(link: Link, options: Arc<CeleryOptions>) -> Self {
        Self {
            link,
            options,
            hubs: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            next_receipt: AtomicU64::new(1),
            next_sub: AtomicU64::new(1),
        }
    }

    /// The queues read now.
    pub(crate) fn queues(&self) -> Vec<String> {
        lock(&self.hubs).keys().cloned().collect()
    }

    async fn open_reader(&self, queue: &str, prefetch: usize) -> Result<Reader, CeleryError> {
        match &self.link {
            Link::Redis(redis) => Ok(Reader::Redis(redis.reader(queue).await?)),
            Link::Amqp(amqp) => Ok(Reader::Amqp(Box::new(amqp.reader(queue, prefetch).await?))),
        }
    }

    /// The Redis envelopes of `queue` handed out and not yet acknowledged.
    fn held(&self, queue: &str) -> std::collections::HashSet<Bytes> {
        lock(&self.inflight)
            .values()
            .filter(|i| i.queue == queue)
            .filter_map(|i| match &i.token {
                Token::Redis(raw) => Some(raw.clone()),
                Token::Amqp(_) => None,
            })
            .collect()
    }

    /// Puts back the tasks of a Redis processing list that no one holds (taken by a read
    /// whose reply was lost, or left when the reader stopped).
    async fn release(&self, queue: &str) {
        if let Link::Redis(redis) = &self.link {
            let held = self.held(queue);
            match redis.release(queue, Some(&held)).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(%queue, tasks = n, "put back tasks no one holds"),
                Err(error) => {
                    tracing::warn!(%queue, %error, "could not put back tasks no one holds; they are put back when this process ends")
                }
            }
        }
    }

    /// Hands one task to the subscriptions that map its name.
    fn route(&self, hub: &Hub, raw: Raw, permit: OwnedSemaphorePermit) -> Option<Token> {
        let task = raw.incoming.task().map(str::to_owned);
        let decoded = protocol::decode(raw.incoming);
        let subs = lock(&hub.subs);
        let mut targets: Vec<(&Sub, TopicName)> = match &task {
            Some(name) => subs
                .iter()
                .filter_map(|s| s.tasks.get(name).map(|topic| (s, topic.clone())))
                .collect(),
            None => Vec::new(),
        };
        if targets.is_empty() {
            let Some(first) = subs.first() else {
                // The reader is stopping: the task goes back.
                return Some(raw.token);
            };
            let topic = match (&decoded.error, &task) {
                (None, Some(name)) => {
                    // As a Celery worker does with a task it has not registered, and as the
                    // runtime does with an unknown event: acknowledged and counted.
                    tracing::warn!(queue = %hub.queue, task = %name, "a task no handler here maps; acknowledged and skipped (give tasks handled elsewhere a queue of their own)");
                    TopicName::from(name.as_str())
                }
                _ => first.fallback.clone(),
            };
            targets.push((first, topic));
        }
        if let Some(error) = &decoded.error {
            tracing::warn!(queue = %hub.queue, task = ?task, %error, "a task that cannot be decoded; handed over raw to be dead-lettered");
        }
        let receipt = self.next_receipt.fetch_add(1, Ordering::Relaxed);
        lock(&self.inflight).insert(
            receipt,
            Inflight {
                queue: hub.queue.clone(),
                token: raw.token,
                waiting: targets.iter().map(|(s, _)| s.id).collect(),
                _permit: permit,
            },
        );
        for (sub, topic) in targets {
            let mut message = Message::new(topic, decoded.payload.clone())
                .with_headers(decoded.headers.clone())
                .with_position(raw.position.clone())
                .with_receipt(receipt);
            message.key = decoded.key.clone();
            // A receiver that is gone belongs to a subscription being closed, which puts
            // back what it was handed.
            let _ = sub.tx.send(Item::Message(Arc::new(message)));
        }
        None
    }

    fn report(&self, hub: &Hub, error: &CeleryError) {
        for sub in lock(&hub.subs).iter() {
            let _ = sub.tx.send(Item::Failed(error.to_string()));
        }
    }

    /// Acknowledges or puts back tasks on their broker.
    async fn settle(&self, tokens: Vec<(String, Token)>, ack: bool) -> Result<(), CeleryError> {
        let mut redis: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
        let mut outcome = Ok(());
        for (queue, token) in tokens {
            match token {
                Token::Redis(raw) => redis.entry(queue).or_default().push(raw),
                Token::Amqp(acker) => {
                    let done = if ack {
                        acker.ack(BasicAckOptions::default()).await
                    } else {
                        acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            })
                            .await
                    };
                    if let Err(error) = done
                        && outcome.is_ok()
                    {
                        outcome = Err(error.into());
                    }
                }
            }
        }
        if let Link::Redis(transport) = &self.link {
            for (queue, raws) in redis {
                let done = if ack {
                    transport.ack(&queue, &raws).await
                } else {
                    transport.give_back(&queue, &raws).await
                };
                if let Err(error) = done
                    && outcome.is_ok()
                {
                    outcome = Err(error);
                }
            }
        }
        outcome
    }

    /// Detaches subscription `sub` from its queues' readers, stopping those it was the last
    /// one of, and takes the tasks it still held out of the in-flight table.
    fn detach(&self, sub: u64, queues: &[String]) -> (Vec<(String, Token)>, Vec<Arc<Hub>>) {
        let mut stopped = Vec::new();
        {
            let mut hubs = lock(&self.hubs);
            for queue in queues {
                let Some(hub) = hubs.get(queue).cloned() else {
                    continue;
                };
                let empty = {
                    let mut subs = lock(&hub.subs);
                    subs.retain(|s| s.id != sub);
                    subs.is_empty()
                };
                if empty {
                    hubs.remove(queue);
                    stopped.push(hub);
                }
            }
        }
        let mut inflight = lock(&self.inflight);
        let held: Vec<u64> = inflight
            .iter()
            .filter(|(_, i)| i.waiting.contains(&sub))
            .map(|(receipt, _)| *receipt)
            .collect();
        // A task given up by one subscription goes back whole: every one gets it again.
        let tokens = held
            .into_iter()
            .filter_map(|receipt| inflight.remove(&receipt))
            .map(|i| (i.queue, i.token))
            .collect();
        (tokens, stopped)
    }

    /// Closes subscription `sub`: what it held goes back (unless `release` is false: a
    /// simulated crash, left for the liveness sweep), and readers no one uses stop.
    async fn close(&self, sub: u64, queues: &[String], release: bool) -> Result<(), CeleryError> {
        let (tokens, stopped) = self.detach(sub, queues);
        let outcome = if release && !tokens.is_empty() {
            self.settle(tokens, false).await
        } else {
            Ok(())
        };
        for hub in stopped {
            let stop = lock(&hub.stop).take();
            if let Some(stop) = stop {
                let _ = stop.send(release);
            }
            let task = lock(&hub.task).take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        outcome
    }
}

/// Joins `subscription`: every topic must map to a task; the tasks are read from their
/// queues, one reader per queue and broker.
pub(crate) async fn subscribe(
    shared: &Arc<Shared>,
    subscription: Subscription,
) -> Result<Box<dyn Consumer>, CeleryError> {
    let names = TopicNames::new(&subscription.topics);
    let mut by_queue: BTreeMap<String, HashMap<String, TopicName>> = BTreeMap::new();
    let mut fallbacks: HashMap<String, TopicName> = HashMap::new();
    for topic in &subscription.topics {
        let route = shared.options.find(topic).ok_or_else(|| {
            CeleryError::config(
                TASKS_VARIABLE,
                format!(
                    "topic `{topic}` (group `{}`) has no Celery task to read; add `{topic}=module.task` or `{topic}=module.task@queue`",
                    subscription.group
                ),
            )
        })?;
        by_queue
            .entry(route.queue.clone())
            .or_default()
            .entry(route.task.clone())
            .or_insert_with(|| names.get(topic));
        fallbacks
            .entry(route.queue.clone())
            .or_insert_with(|| names.get(topic));
    }
    let id = shared.next_sub.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    let queues: Vec<String> = by_queue.keys().cloned().collect();
    for (queue, tasks) in by_queue {
        let sub = Sub {
            id,
            tasks,
            fallback: fallbacks.remove(&queue).unwrap_or_default(),
            tx: tx.clone(),
        };
        if let Err(error) = attach(shared, &queue, sub, subscription.prefetch).await {
            let _ = shared.close(id, &queues, true).await;
            return Err(error);
        }
    }
    Ok(Box::new(CeleryConsumer {
        shared: Arc::clone(shared),
        id,
        queues,
        rx,
        closed: false,
    }))
}

/// Adds `sub` to the reader of `queue`, starting one if there is none.
async fn attach(
    shared: &Arc<Shared>,
    queue: &str,
    sub: Sub,
    prefetch: usize,
) -> Result<(), CeleryError> {
    if let Some(hub) = lock(&shared.hubs).get(queue) {
        lock(&hub.subs).push(sub);
        return Ok(());
    }
    let prefetch = prefetch.clamp(1, usize::from(u16::MAX));
    let reader = shared.open_reader(queue, prefetch).await?;
    // `Err`: another subscription started a reader meanwhile, and ours is not needed.
    let started = {
        let mut hubs = lock(&shared.hubs);
        match hubs.get(queue) {
            Some(hub) => {
                lock(&hub.subs).push(sub);
                Err(reader)
            }
            None => {
                let (stop, stopped) = oneshot::channel();
                let hub = Arc::new(Hub {
                    queue: queue.to_owned(),
                    subs: Mutex::new(vec![sub]),
                    permits: Arc::new(Semaphore::new(prefetch)),
                    stop: Mutex::new(Some(stop)),
                    task: Mutex::new(None),
                });
                let task = tokio::spawn(read(
                    Arc::downgrade(shared),
                    Arc::clone(&hub),
                    reader,
                    stopped,
                    prefetch,
                ));
                *lock(&hub.task) = Some(task);
                hubs.insert(queue.to_owned(), Arc::clone(&hub));
                Ok(hub)
            }
        }
    };
    let hub = match started {
        Ok(hub) => hub,
        Err(unneeded) => {
            unneeded.close().await;
            return Ok(());
        }
    };
    tracing::debug!(queue = %hub.queue, prefetch, "reading the queue");
    Ok(())
}

/// The reader of one queue: takes tasks while there are permits, routes them, reconnects
/// after failures, until stopped.
async fn read(
    shared: Weak<Shared>,
    hub: Arc<Hub>,
    reader: Reader,
    mut stop: oneshot::Receiver<bool>,
    prefetch: usize,
) {
    let mut reader = Some(reader);
    let mut lost_reply = false;
    let release = loop {
        let Some(this) = shared.upgrade() else {
            break false;
        };
        let delay = this.options.reconnect_delay;
        let step = async {
            let mut current = match reader.take() {
                Some(current) => current,
                None => {
                    let opened = this.open_reader(&hub.queue, prefetch).await?;
                    if std::mem::take(&mut lost_reply) {
                        this.release(&hub.queue).await;
                    }
                    tracing::info!(queue = %hub.queue, "reading the queue again");
                    opened
                }
            };
            let mut permits = vec![
                Arc::clone(&hub.permits)
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed"),
            ];
            while permits.len() < FETCH_MAX {
                match Arc::clone(&hub.permits).try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let fetched = current.fetch(permits.len()).await;
            reader = Some(current);
            for raw in fetched? {
                let permit = permits.pop().expect("no more tasks than permits");
                if let Some(token) = this.route(&hub, raw, permit) {
                    this.settle(vec![(hub.queue.clone(), token)], false).await?;
                }
            }
            Ok::<(), CeleryError>(())
        };
        let result = tokio::select! {
            biased;
            release = &mut stop => break release.unwrap_or(true),
            result = step => result,
        };
        if let Err(error) = result {
            tracing::warn!(queue = %hub.queue, %error, "reading the queue failed; trying again");
            this.report(&hub, &error);
            if let Some(broken) = reader.take() {
                broken.close().await;
            }
            lost_reply = true;
            drop(this);
            tokio::select! {
                release = &mut stop => break release.unwrap_or(true),
                () = tokio::time::sleep(delay) => {}
            }
        }
    };
    // A fetch cut short by the stop may have taken tasks whose reply it never saw.
    if let Some(reader) = reader.take() {
        reader.close().await;
    }
    if release && let Some(shared) = shared.upgrade() {
        shared.release(&hub.queue).await;
    }
}

/// One subscription.
struct CeleryConsumer {
    shared: Arc<Shared>,
    id: u64,
    queues: Vec<String>,
    rx: mpsc::UnboundedReceiver<Item>,
    closed: bool,
}

impl Consumer for CeleryConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(async move {
            let mut batch = match self.rx.recv().await {
                Some(Item::Message(message)) => vec![message],
                Some(Item::Failed(error)) => {
                    return Err(BrokerError::operation(crate::error::NAME, "consume", error));
                }
                None => {
                    return Err(BrokerError::Closed {
                        broker: crate::error::NAME,
                    });
                }
            };
            while batch.len() < max.max(1) {
                match self.rx.try_recv() {
                    Ok(Item::Message(message)) => batch.push(message),
                    _ => break,
                }
            }
            Ok(batch)
        })
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::new(CeleryAcker {
            shared: Arc::clone(&self.shared),
            sub: self.id,
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.closed = true;
        let (shared, id, queues) = (Arc::clone(&self.shared), self.id, self.queues.clone());
        Box::pin(async move {
            shared
                .close(id, &queues, true)
                .await
                .map_err(|e| e.into_broker("close"))
        })
    }
}

impl Drop for CeleryConsumer {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let (shared, id, queues) = (Arc::clone(&self.shared), self.id, self.queues.clone());
        let release = shared.options.release_on_drop;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = shared.close(id, &queues, release).await {
                        tracing::warn!(%error, "a dropped consumer could not put back its tasks; they are put back when this process ends");
                    }
                });
            }
            Err(_) => {
                // No runtime to put them back with: stop routing to it at least.
                let _ = shared.detach(id, &queues);
            }
        }
    }
}

/// Acknowledges the tasks one subscription was handed.
struct CeleryAcker {
    shared: Arc<Shared>,
    sub: u64,
}

impl CeleryAcker {
    async fn ack_all(&self, messages: &[&Message]) -> Result<(), BrokerError> {
        let mut done = Vec::new();
        let mut stale = None;
        {
            let mut inflight = lock(&self.shared.inflight);
            for message in messages {
                let entry = inflight
                    .get_mut(&message.receipt)
                    .filter(|i| i.waiting.contains(&self.sub));
                let Some(entry) = entry else {
                    stale.get_or_insert(message.receipt);
                    continue;
                };
                entry.waiting.retain(|s| *s != self.sub);
                if entry.waiting.is_empty()
                    && let Some(entry) = inflight.remove(&message.receipt)
                {
                    done.push((entry.queue, entry.token));
                }
            }
        }
        let outcome = self
            .shared
            .settle(done, true)
            .await
            .map_err(|e| e.into_broker("ack"));
        match stale {
            Some(receipt) if outcome.is_ok() => Err(BrokerError::operation(
                crate::error::NAME,
                "ack",
                format!(
                    "task {receipt} is no longer held (put back after its consumer closed); it is delivered again"
                ),
            )),
            _ => outcome,
        }
    }
}

impl Acker for CeleryAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move { self.ack_all(&[message]).await })
    }

    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let messages: Vec<&Message> = messages.iter().map(|m| &**m).collect();
            self.ack_all(&messages).await
        })
    }
}
