//! The in-memory broker: for users' unit tests and the quick start. It keeps the semantics of
//! the real brokers: every group gets every message, instances of one group share them, a
//! message is handed to one instance at a time until acknowledged, and what a dropped consumer
//! held is delivered again. Dead-letter topics are ordinary topics.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::{Notify, mpsc};

use crate::broker::{Acker, Broker, BrokerFactory, Consumer, DlqSnapshot, StartFrom, Subscription};
use crate::error::BrokerError;
use crate::handler::BoxFuture;
use crate::lag::LagRow;
use crate::message::{Message, OutgoingMessage, Position, TopicName};
use crate::reply::ReplyInbox;

const NAME: &str = "memory";

/// An in-process broker. Clones share the same topics.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken on publishes and acknowledgements while someone is in [`MemoryBroker::wait_idle`].
    changed: Notify,
    idle_waiters: AtomicUsize,
}

impl Shared {
    fn changed(&self) {
        // Skipped on the hot path unless a test waits for idleness.
        if self.idle_waiters.load(Ordering::Acquire) > 0 {
            self.changed.notify_waiters();
        }
    }
}

/// Replies a requester may have unread before a responder waits for it to read.
const REPLY_BUFFER: usize = 1024;

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    next_consumer: u64,
    /// Reply inboxes by address: replies go straight to the requester, in process.
    inboxes: HashMap<String, mpsc::Sender<Message>>,
}

struct Topic {
    /// The name every message of the topic shares.
    name: TopicName,
    log: Vec<Arc<Message>>,
    /// Offsets taken out by a DLQ replay: no longer listed nor replayed.
    removed: BTreeSet<usize>,
    /// One cursor per group, shared by the group's consumers; locked on its own so that
    /// acknowledgements do not take the broker-wide lock.
    groups: HashMap<String, SharedCursor>,
    /// Consumers to wake when something arrives, by consumer id.
    waiters: HashMap<u64, Weak<Notify>>,
}

impl Topic {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            log: Vec::new(),
            removed: BTreeSet::new(),
            groups: HashMap::new(),
            waiters: HashMap::new(),
        }
    }
}

type SharedCursor = Arc<Mutex<Cursor>>;

fn lock(cursor: &Mutex<Cursor>) -> MutexGuard<'_, Cursor> {
    cursor.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Cursor {
    /// The next offset never handed out.
    next: usize,
    /// Offsets handed back by dropped consumers, delivered first, in order.
    redeliver: BTreeSet<usize>,
    /// Offsets handed out and not acknowledged, with the consumer holding them.
    in_flight: InFlight,
}

/// Offsets handed out and not acknowledged, as a window from the oldest one: slot `i` holds
/// the consumer holding offset `base + i`, `None` once settled. Offsets are handed out nearly
/// in order, so taking and settling one is an index, not a hash-map insert and removal (the
/// memory broker is on the hot path of users' tests and of the dispatch benchmark).
#[derive(Default)]
struct InFlight {
    base: usize,
    slots: VecDeque<Option<u64>>,
    held: usize,
}

impl InFlight {
    fn len(&self) -> usize {
        self.held
    }

    fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn insert(&mut self, offset: usize, consumer: u64) {
        if self.slots.is_empty() {
            self.base = offset;
        }
        // A redelivered offset can lie before the window.
        while offset < self.base {
            self.slots.push_front(None);
            self.base -= 1;
        }
        let index = offset - self.base;
        if index == self.slots.len() {
            // The usual case: the next offset of the log.
            self.slots.push_back(Some(consumer));
            self.held += 1;
            return;
        }
        if index > self.slots.len() {
            self.slots.resize(index + 1, None);
        }
        if self.slots[index].replace(consumer).is_none() {
            self.held += 1;
        }
    }

    /// Settles `offset` if `consumer` holds it; returns whether it did.
    fn remove(&mut self, offset: usize, consumer: u64) -> bool {
        let Some(slot) = offset
            .checked_sub(self.base)
            .and_then(|index| self.slots.get_mut(index))
        else {
            return false;
        };
        if *slot != Some(consumer) {
            return false;
        }
        *slot = None;
        self.held -= 1;
        while self.slots.front() == Some(&None) {
            self.slots.pop_front();
            self.base += 1;
        }
        true
    }

    /// Settles and returns every offset `consumer` holds.
    fn take_all_of(&mut self, consumer: u64) -> Vec<usize> {
        let held: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == Some(consumer))
            .map(|(i, _)| self.base + i)
            .collect();
        for &offset in &held {
            self.remove(offset, consumer);
        }
        held
    }
}

impl Cursor {
    fn is_settled(&self, log_len: usize) -> bool {
        self.next >= log_len && self.redeliver.is_empty() && self.in_flight.is_empty()
    }
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide instance that `MESSAGING_BACKEND=memory` selects, so the producer and
    /// the consumers of one process meet.
    pub fn shared() -> Self {
        static SHARED: OnceLock<MemoryBroker> = OnceLock::new();
        SHARED.get_or_init(MemoryBroker::new).clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a message; returns its offset.
    pub fn append(&self, message: OutgoingMessage) -> u64 {
        self.append_all(std::iter::once(message))
    }

    /// Appends messages in order under one lock and wakes each waiting consumer once; returns
    /// the offset of the last one (0 when there were none).
    pub fn append_all(&self, messages: impl IntoIterator<Item = OutgoingMessage>) -> u64 {
        let mut state = self.state();
        let mut last = 0;
        let mut touched: Vec<TopicName> = Vec::new();
        for message in messages {
            let topic = match state.topics.get_mut(&message.topic) {
                Some(topic) => topic,
                None => state
                    .topics
                    .entry(message.topic.clone())
                    .or_insert_with_key(|name| Topic::new(name)),
            };
            let offset = topic.log.len();
            topic.log.push(Arc::new(Message {
                topic: topic.name.clone(),
                key: message.key,
                payload: message.payload,
                headers: message.headers,
                position: Position::Offset(offset as u64),
                receipt: 0,
            }));
            last = offset as u64;
            if touched.last() != Some(&topic.log[offset].topic)
                && !touched.contains(&topic.log[offset].topic)
            {
                touched.push(topic.log[offset].topic.clone());
            }
        }
        for name in &touched {
            if let Some(topic) = state.topics.get_mut(&**name) {
                topic.waiters.retain(|_, waiter| match waiter.upgrade() {
                    Some(notify) => {
                        notify.notify_one();
                        true
                    }
                    None => false,
                });
            }
        }
        drop(state);
        self.shared.changed();
        last
    }

    /// Every message ever published to `topic`, in order.
    pub fn messages(&self, topic: &str) -> Vec<Arc<Message>> {
        self.state()
            .topics
            .get(topic)
            .map(|t| t.log.clone())
            .unwrap_or_default()
    }

    /// The messages of `topic` that a DLQ replay has not taken out, in order: what
    /// `consumer dlq list` shows.
    pub fn waiting(&self, topic: &str) -> Vec<Arc<Message>> {
        self.state()
            .topics
            .get(topic)
            .map(|t| {
                t.log
                    .iter()
                    .enumerate()
                    .filter(|(offset, _)| !t.removed.contains(offset))
                    .map(|(_, m)| Arc::clone(m))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether every group has received and acknowledged everything on its topics.
    pub fn is_idle(&self) -> bool {
        self.state()
            .topics
            .values()
            .all(|t| t.groups.values().all(|c| lock(c).is_settled(t.log.len())))
    }

    /// Messages of `topic` not yet acknowledged by `group` (handed out or not).
    pub fn unacknowledged(&self, topic: &str, group: &str) -> usize {
        let state = self.state();
        let Some(t) = state.topics.get(topic) else {
            return 0;
        };
        t.groups.get(group).map_or(0, |c| {
            let c = lock(c);
            t.log.len().saturating_sub(c.next) + c.redeliver.len() + c.in_flight.len()
        })
    }

    /// Waits until [`MemoryBroker::is_idle`]. Under paused Tokio time, retry back-offs elapse
    /// by themselves while this waits.
    pub async fn wait_idle(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.shared.idle_waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.shared.idle_waiters);
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_idle() {
                return;
            }
            changed.await;
        }
    }

    fn take(
        &self,
        consumer: u64,
        cursors: &[(String, SharedCursor)],
        max: usize,
    ) -> Vec<Arc<Message>> {
        let state = self.state();
        let mut out = Vec::new();
        for (name, cursor) in cursors {
            let Some(topic) = state.topics.get(name) else {
                continue;
            };
            let mut cursor = lock(cursor);
            while out.len() < max {
                let offset = match cursor.redeliver.pop_first() {
                    Some(offset) => offset,
                    None if cursor.next < topic.log.len() => {
                        cursor.next += 1;
                        cursor.next - 1
                    }
                    None => break,
                };
                cursor.in_flight.insert(offset, consumer);
                out.push(Arc::clone(&topic.log[offset]));
            }
        }
        out
    }

    fn leave(&self, consumer: u64, cursors: &[(String, SharedCursor)]) {
        let mut state = self.state();
        for (name, cursor) in cursors {
            let Some(topic) = state.topics.get_mut(name) else {
                continue;
            };
            topic.waiters.remove(&consumer);
            let mut cursor = lock(cursor);
            let held = cursor.in_flight.take_all_of(consumer);
            if held.is_empty() {
                continue;
            }
            cursor.redeliver.extend(held);
            for waiter in topic.waiters.values().filter_map(Weak::upgrade) {
                waiter.notify_one();
            }
        }
        drop(state);
        self.shared.changed();
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.append(message);
        Box::pin(async { Ok(()) })
    }

    fn open_replies(&self) -> BoxFuture<'_, Result<ReplyInbox, BrokerError>> {
        let address = format!("memory.replies.{}", uuid::Uuid::now_v7().simple());
        let (sender, replies) = mpsc::channel(REPLY_BUFFER);
        let mut state = self.state();
        // Those of requesters that are gone.
        state.inboxes.retain(|_, inbox| !inbox.is_closed());
        state.inboxes.insert(address.clone(), sender);
        Box::pin(async move { Ok(ReplyInbox::new(address, replies)) })
    }

    fn publish_reply(&self, reply: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        let Some(inbox) = self.state().inboxes.get(&reply.topic).cloned() else {
            // Not an inbox of this broker: a topic, as on the other brokers.
            return self.publish(reply);
        };
        let message = Message {
            topic: reply.topic.as_str().into(),
            key: reply.key,
            payload: reply.payload,
            headers: reply.headers,
            position: Position::Unknown,
            receipt: 0,
        };
        Box::pin(async move {
            // A requester that is gone reads nothing: dropped, as a reply to it would be on a
            // real broker.
            let _ = inbox.send(message).await;
            Ok(())
        })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        let notify = Arc::new(Notify::new());
        let mut state = self.state();
        let id = state.next_consumer;
        state.next_consumer += 1;
        let mut cursors = Vec::new();
        for name in &subscription.topics {
            let topic = state
                .topics
                .entry(name.clone())
                .or_insert_with_key(|name| Topic::new(name));
            let start = match subscription.start {
                StartFrom::Latest => topic.log.len(),
                StartFrom::Earliest => 0,
            };
            let cursor = topic
                .groups
                .entry(subscription.group.clone())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Cursor {
                        next: start,
                        ..Cursor::default()
                    }))
                });
            cursors.push((name.clone(), Arc::clone(cursor)));
            topic.waiters.insert(id, Arc::downgrade(&notify));
        }
        drop(state);
        let consumer = MemoryConsumer {
            acker: Arc::new(MemoryAcker {
                broker: self.clone(),
                consumer: id,
                cursors,
            }),
            notify,
        };
        Box::pin(async move { Ok(Box::new(consumer) as Box<dyn Consumer>) })
    }

    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut state = self.state();
        for topic in topics {
            state
                .topics
                .entry(topic.clone())
                .or_insert_with_key(|name| Topic::new(name));
        }
        Box::pin(async { Ok(()) })
    }

    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        let messages = self
            .waiting(topic)
            .into_iter()
            .take(limit)
            .map(|m| (*m).clone())
            .collect();
        Box::pin(async move { Ok(messages) })
    }

    /// Per topic the group reads: what it has not acknowledged (never handed out, handed
    /// back by a dropped consumer, or in flight), and of that what is in flight.
    fn lag<'a>(
        &'a self,
        group: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<LagRow>, BrokerError>> {
        let state = self.state();
        let rows = topics
            .iter()
            .filter_map(|name| {
                let topic = state.topics.get(name)?;
                let cursor = lock(topic.groups.get(group)?);
                let pending = cursor.in_flight.len() as u64;
                let waiting = topic.log.len().saturating_sub(cursor.next) + cursor.redeliver.len();
                Some(LagRow {
                    group: group.to_owned(),
                    topic: name.clone(),
                    partition: None,
                    lag: waiting as u64 + pending,
                    pending: Some(pending),
                })
            })
            .collect();
        Box::pin(std::future::ready(Ok(rows)))
    }

    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        let records = self
            .waiting(topic)
            .into_iter()
            .take(limit)
            .map(|m| (*m).clone())
            .collect();
        let snapshot = MemorySnapshot {
            broker: self.clone(),
            topic: topic.to_owned(),
            records,
        };
        Box::pin(async move { Ok(Box::new(snapshot) as Box<dyn DlqSnapshot>) })
    }
}

/// A replay's records: the replayed ones are taken out of the topic's listing.
struct MemorySnapshot {
    broker: MemoryBroker,
    topic: String,
    records: Vec<Message>,
}

impl DlqSnapshot for MemorySnapshot {
    fn records(&self) -> &[Message] {
        &self.records
    }

    fn settle(
        self: Box<Self>,
        replayed: Vec<usize>,
    ) -> BoxFuture<'static, Result<(), BrokerError>> {
        if let Some(topic) = self.broker.state().topics.get_mut(&self.topic) {
            for index in replayed {
                if let Some(Position::Offset(offset)) = self.records.get(index).map(|m| &m.position)
                {
                    topic.removed.insert(*offset as usize);
                }
            }
        }
        Box::pin(async { Ok(()) })
    }
}

struct MemoryConsumer {
    acker: Arc<MemoryAcker>,
    notify: Arc<Notify>,
}

impl Consumer for MemoryConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(async move {
            loop {
                // Taking happens under the lock with no await in between: cancel-safe.
                let a = &self.acker;
                let batch = a.broker.take(a.consumer, &a.cursors, max.max(1));
                if !batch.is_empty() {
                    return Ok(batch);
                }
                // `notify_one` stores a permit, so a publish between `take` and here is not missed.
                self.notify.notified().await;
            }
        })
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::clone(&self.acker) as Arc<dyn Acker>
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let a = &self.acker;
        a.broker.leave(a.consumer, &a.cursors);
    }
}

struct MemoryAcker {
    broker: MemoryBroker,
    consumer: u64,
    /// This consumer's topics and its group's cursor on each.
    cursors: Vec<(String, SharedCursor)>,
}

impl MemoryAcker {
    fn cursor(&self, topic: &str) -> Option<&SharedCursor> {
        self.cursors
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, cursor)| cursor)
    }

    fn settle(&self, message: &Message) {
        let Position::Offset(offset) = message.position else {
            return;
        };
        let Some(cursor) = self.cursor(&message.topic) else {
            return;
        };
        // A message handed back by a dropped consumer belongs to someone else now: then this
        // settles nothing.
        lock(cursor)
            .in_flight
            .remove(offset as usize, self.consumer);
        self.broker.shared.changed();
    }

    /// Settles many messages, locking each topic's cursor once per run of its messages.
    fn settle_all(&self, messages: &[Arc<Message>]) {
        let mut held: Option<(&Message, MutexGuard<'_, Cursor>)> = None;
        for message in messages {
            let Position::Offset(offset) = message.position else {
                continue;
            };
            // `Arc<str>` equality looks at the pointer first.
            let same_topic = held
                .as_ref()
                .is_some_and(|(last, _)| last.topic == message.topic);
            if !same_topic {
                held = None;
                let Some(cursor) = self.cursor(&message.topic) else {
                    continue;
                };
                held = Some((message, lock(cursor)));
            }
            if let Some((_, cursor)) = held.as_mut() {
                cursor.in_flight.remove(offset as usize, self.consumer);
            }
        }
        drop(held);
        self.broker.shared.changed();
    }
}

impl Acker for MemoryAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.settle(message);
        Box::pin(async { Ok(()) })
    }

    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.settle_all(messages);
        Box::pin(std::future::ready(Ok(())))
    }
}

inventory::submit! {
    BrokerFactory::new(NAME, |_config| {
        Box::pin(async { Ok(Arc::new(MemoryBroker::shared()) as Arc<dyn Broker>) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(group: &str) -> Subscription {
        Subscription {
            group: group.into(),
            topics: vec!["t".into()],
            start: StartFrom::Latest,
            prefetch: 100,
        }
    }

    #[tokio::test]
    async fn groups_each_get_everything_and_instances_share() {
        let broker = MemoryBroker::new();
        let mut a1 = broker.subscribe(sub("a")).await.unwrap();
        let mut a2 = broker.subscribe(sub("a")).await.unwrap();
        let mut b = broker.subscribe(sub("b")).await.unwrap();
        for i in 0..4 {
            broker
                .publish(OutgoingMessage::new("t", vec![i]))
                .await
                .unwrap();
        }
        let first = a1.next_batch(2).await.unwrap();
        let second = a2.next_batch(10).await.unwrap();
        assert_eq!(first.len() + second.len(), 4);
        assert_eq!(b.next_batch(10).await.unwrap().len(), 4);
    }

    #[tokio::test]
    async fn dropped_consumer_hands_back_unacknowledged() {
        let broker = MemoryBroker::new();
        let mut c1 = broker.subscribe(sub("g")).await.unwrap();
        let mut c2 = broker.subscribe(sub("g")).await.unwrap();
        for i in 0..3 {
            broker
                .publish(OutgoingMessage::new("t", vec![i]))
                .await
                .unwrap();
        }
        let got = c1.next_batch(3).await.unwrap();
        c1.acker().ack(&got[0]).await.unwrap();
        drop(c1);
        let again = c2.next_batch(10).await.unwrap();
        let payloads: Vec<u8> = again.iter().map(|m| m.payload[0]).collect();
        assert_eq!(payloads, vec![1, 2]);
        assert!(!broker.is_idle());
        for m in &again {
            c2.acker().ack(m).await.unwrap();
        }
        assert!(broker.is_idle());
    }

    #[test]
    fn in_flight_window_settles_by_holder_and_takes_offsets_before_it() {
        let mut window = InFlight::default();
        for offset in 10..15 {
            window.insert(offset, offset as u64 % 2);
        }
        assert_eq!(window.len(), 5);
        // Only the holder settles an offset; unknown offsets settle nothing.
        assert!(!window.remove(10, 1));
        assert!(!window.remove(9, 0));
        assert!(!window.remove(99, 0));
        assert!(window.remove(10, 0));
        assert!(!window.remove(10, 0));
        assert_eq!(window.take_all_of(1), vec![11, 13]);
        assert_eq!(window.len(), 2);
        // A redelivered offset before the window, and one far after it.
        window.insert(3, 7);
        window.insert(40, 7);
        assert_eq!(window.len(), 4);
        assert_eq!(window.take_all_of(7), vec![3, 40]);
        assert!(window.remove(12, 0));
        assert!(window.remove(14, 0));
        assert!(window.is_empty());
        assert!(window.slots.is_empty());
    }
}
