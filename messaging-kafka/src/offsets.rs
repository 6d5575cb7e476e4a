//! Which offset may be stored for commit. Kafka commits one offset per partition, "the next
//! to read", so an acknowledgement can only move it past messages that are all settled.
//! Acknowledgements may come out of order (a message being retried while later ones of its
//! partition were already fetched, or a handler of another lane finishing first); the offset
//! to store is therefore the lowest unsettled offset of the partition, never more.
//!
//! Acknowledging only updates this tracker; the consumer's polling thread hands the advanced
//! offsets to librdkafka in one call per round ([`OffsetTracker::take_unstored`]), which costs
//! far less than a librdkafka call per message.
//!
//! The tracker also says which partitions hold too much ([`OffsetTracker::flow`]): a
//! partition with too many delivered messages unsettled (a key blocked by a slow handler or a
//! back-off, with the messages behind it) is paused, and resumed once it has drained to half.
//!
//! Messages fetched before a revocation and handed out after it must not reach a handler
//! (the new owner reads them again): each fetched batch carries the tracker's generation, and
//! [`OffsetTracker::still_owned`] keeps only the messages of partitions assigned since.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use messaging_core::{Message, Position};

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acked {
    /// The partition's next-to-read offset moved to this one.
    Advanced(i64),
    /// Recorded; an earlier message of the partition is still unsettled.
    Held,
    /// Not delivered under the current assignment (the partition was revoked since, or the
    /// message was acknowledged already): nothing to store, the new owner reads it again.
    Stale,
}

/// A partition's offset to hand to librdkafka: the next to read.
pub(crate) type ToStore = (String, i32, i64);

#[derive(Debug)]
struct PartitionState {
    topic: String,
    partition: i32,
    /// Delivered offsets not yet settled up to, in increasing order, each with whether it
    /// was acknowledged. The front is the lowest unsettled message.
    window: VecDeque<(i64, bool)>,
    /// One past the highest offset delivered.
    next_unseen: i64,
    /// The next offset to read, as far as acknowledgements go; -1 before any.
    settled: i64,
    /// The last `settled` handed out to be stored.
    stored: i64,
    /// How many of `window` are not acknowledged.
    unsettled: usize,
    /// Paused for holding too much (see [`OffsetTracker::flow`]).
    paused: bool,
    /// The tracker's generation when the partition was assigned.
    since: u64,
    /// `settled` when [`OffsetTracker::flow`] last saw it change, and when.
    seen_settled: (i64, Instant),
    /// Found full by [`OffsetTracker::room`]: acknowledgements call the tracker's `on_room`
    /// once it is down to this many unsettled messages.
    full: Option<usize>,
}

impl PartitionState {
    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

/// Per assigned partition, the delivered and settled offsets of one consumer. A consumer
/// holds few partitions, so a list searched in order beats hashing the topic per message.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    partitions: Mutex<Vec<PartitionState>>,
    /// Signalled on acknowledgements while someone waits in [`OffsetTracker::drain`].
    settled: Condvar,
    /// Whether someone waits; acknowledgements signal only then (a signal is a system call).
    draining: AtomicBool,
    /// Moves on every assignment and revocation (changed under the lock of `partitions`).
    generation: AtomicU64,
    /// Called (outside the lock) when a partition found full has room again: the polling
    /// thread, which does not read a full partition, is woken to read it.
    on_room: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// What a revocation leaves to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Revoked {
    /// Offsets not stored yet, to store before committing.
    pub(crate) unstored: Vec<ToStore>,
    /// Partitions that were paused, to resume (librdkafka would keep them paused).
    pub(crate) paused: Vec<(String, i32)>,
}

/// What [`OffsetTracker::flow`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) pause: Vec<(String, i32)>,
    pub(crate) resume: Vec<(String, i32)>,
    /// Whether any partition stays paused.
    pub(crate) paused: bool,
}

impl OffsetTracker {
    fn lock(&self) -> MutexGuard<'_, Vec<PartitionState>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking newly assigned partitions afresh.
    pub(crate) fn assign<'a>(&self, assigned: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut partitions = self.lock();
        let since = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        for (topic, partition) in assigned {
            partitions.retain(|s| !s.is(topic, partition));
            partitions.push(PartitionState {
                topic: topic.to_owned(),
                partition,
                window: VecDeque::new(),
                next_unseen: -1,
                settled: -1,
                stored: -1,
                unsettled: 0,
                paused: false,
                since,
                seen_settled: (-1, Instant::now()),
                full: None,
            });
        }
    }

    /// Forgets revoked partitions and returns their offsets not yet stored, to store before
    /// committing, and those paused. Later acknowledgements of their messages are
    /// [`Acked::Stale`], and their messages not handed out yet are not handed out.
    pub(crate) fn revoke<'a>(&self, revoked: impl IntoIterator<Item = (&'a str, i32)>) -> Revoked {
        let mut partitions = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut done = Revoked::default();
        for (topic, partition) in revoked {
            if let Some(i) = partitions.iter().position(|s| s.is(topic, partition)) {
                let state = partitions.swap_remove(i);
                if state.paused {
                    done.paused.push((state.topic.clone(), partition));
                }
                if state.settled > state.stored {
                    done.unstored.push((state.topic, partition, state.settled));
                }
            }
        }
        done
    }

    /// Keeps, of messages delivered in `generation`, those whose partition is still assigned
    /// since then (no lock unless a rebalance happened meanwhile).
    pub(crate) fn still_owned(&self, generation: u64, messages: &mut Vec<Arc<Message>>) {
        if self.generation.load(Ordering::Acquire) == generation {
            return;
        }
        let mut partitions = self.lock();
        let mut last = Last::default();
        messages.retain(|m| {
            let Position::Partition { partition, .. } = m.position else {
                return false;
            };
            last.find(&mut partitions, &m.topic, partition)
                .is_some_and(|state| state.since <= generation)
        });
    }

    /// The partitions assigned.
    pub(crate) fn assigned(&self) -> Vec<(String, i32)> {
        self.lock()
            .iter()
            .map(|s| (s.topic.clone(), s.partition))
            .collect()
    }

    /// How many more messages of a partition may be delivered: none once it holds
    /// `max_unsettled` messages unsettled, or `max_span` offsets since its lowest unsettled
    /// one; `None` if it is not assigned.
    ///
    /// A partition found full is marked so: once acknowledgements bring it down to three
    /// quarters of `max_unsettled`, they call `on_room`.
    pub(crate) fn room(
        &self,
        topic: &str,
        partition: i32,
        max_unsettled: usize,
        max_span: usize,
    ) -> Option<usize> {
        let mut partitions = self.lock();
        let state = partitions.iter_mut().find(|s| s.is(topic, partition))?;
        let room = if state.window.len() >= max_span {
            0
        } else {
            max_unsettled.saturating_sub(state.unsettled)
        };
        state.full = (room == 0).then_some(max_unsettled * 3 / 4);
        Some(room)
    }

    /// What to call when a full partition has room again (see [`OffsetTracker::room`]).
    pub(crate) fn on_room(&self, call: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_room.set(Box::new(call));
    }

    fn room_again(&self) {
        if let Some(call) = self.on_room.get() {
            call();
        }
    }

    /// Which partitions to pause and which paused ones to resume; each is marked so. A
    /// partition is paused when it is full (see [`OffsetTracker::room`]) and its offset to
    /// commit has not moved for `stuck_after` (a key blocked by a slow handler or a back-off:
    /// librdkafka would go on fetching for it), and resumed once down to half of both
    /// limits. A partition that is merely full while its messages are handled is not read
    /// for a moment; pausing it would throw away what librdkafka fetched ahead.
    pub(crate) fn flow(
        &self,
        max_unsettled: usize,
        max_span: usize,
        stuck_after: Duration,
        now: Instant,
    ) -> Flow {
        let mut partitions = self.lock();
        let mut flow = Flow::default();
        for state in partitions.iter_mut() {
            let (unsettled, span) = (state.unsettled, state.window.len());
            if state.seen_settled.0 != state.settled {
                state.seen_settled = (state.settled, now);
            }
            let stuck = now.duration_since(state.seen_settled.1) >= stuck_after;
            if !state.paused && stuck && (unsettled >= max_unsettled || span >= max_span) {
                state.paused = true;
                flow.pause.push((state.topic.clone(), state.partition));
            } else if state.paused && unsettled <= max_unsettled / 2 && span <= max_span / 2 {
                state.paused = false;
                flow.resume.push((state.topic.clone(), state.partition));
            }
            flow.paused |= state.paused;
        }
        flow
    }

    /// Records delivered messages and keeps those that may be handed out: a message of a
    /// partition no longer assigned (fetched before a revocation) must not be. Returns the
    /// generation they were delivered in, for [`OffsetTracker::still_owned`].
    pub(crate) fn deliver(&self, messages: &mut Vec<Arc<Message>>) -> u64 {
        let mut partitions = self.lock();
        let mut last = Last::default();
        messages.retain(|m| {
            let Position::Partition { partition, offset } = m.position else {
                return false;
            };
            let Some(state) = last.find(&mut partitions, &m.topic, partition) else {
                return false;
            };
            match state.window.back() {
                Some(&(last, _)) if offset <= last => {
                    // Not seen in practice (a partition is read in order); kept sorted.
                    if let Err(at) = state.window.binary_search_by_key(&offset, |e| e.0) {
                        state.window.insert(at, (offset, false));
                        state.unsettled += 1;
                    }
                }
                _ => {
                    state.window.push_back((offset, false));
                    state.unsettled += 1;
                }
            }
            state.next_unseen = state.next_unseen.max(offset + 1);
            true
        });
        self.generation.load(Ordering::Acquire)
    }

    /// Settles a message (see [`settle`]).
    pub(crate) fn ack(&self, topic: &str, partition: i32, offset: i64) -> Acked {
        let mut room = false;
        let acked = Last::default()
            .find(&mut self.lock(), topic, partition)
            .map_or(Acked::Stale, |state| {
                let acked = settle(state, offset);
                room = has_room_again(state);
                acked
            });
        if self.draining.load(Ordering::SeqCst) {
            self.settled.notify_all();
        }
        if room {
            self.room_again();
        }
        acked
    }

    /// Settles several messages under one lock; returns how many were stale.
    pub(crate) fn ack_all<'a>(
        &self,
        acked: impl IntoIterator<Item = (&'a str, i32, i64)>,
    ) -> usize {
        let mut partitions = self.lock();
        let mut last = Last::default();
        let mut room = false;
        let stale = acked
            .into_iter()
            .filter(|&(topic, partition, offset)| {
                last.find(&mut partitions, topic, partition)
                    .is_none_or(|state| {
                        let acked = settle(state, offset);
                        room |= has_room_again(state);
                        acked == Acked::Stale
                    })
            })
            .count();
        drop(partitions);
        if self.draining.load(Ordering::SeqCst) {
            self.settled.notify_all();
        }
        if room {
            self.room_again();
        }
        stale
    }

    /// Waits up to `timeout` until every message delivered from these partitions is
    /// acknowledged (a revocation lets in-flight work finish before committing); returns how
    /// many are still unsettled.
    pub(crate) fn drain(&self, partitions: &[(String, i32)], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        self.draining.store(true, Ordering::SeqCst);
        let mut guard = self.lock();
        let unsettled = loop {
            let unsettled: usize = guard
                .iter()
                .filter(|s| partitions.iter().any(|(t, p)| s.is(t, *p)))
                .map(|s| s.unsettled)
                .sum();
            let now = Instant::now();
            if unsettled == 0 || now >= deadline {
                break unsettled;
            }
            guard = self
                .settled
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(guard);
        self.draining.store(false, Ordering::SeqCst);
        unsettled
    }

    /// The offsets that advanced since last taken, marked as stored.
    pub(crate) fn take_unstored(&self) -> Vec<ToStore> {
        let mut partitions = self.lock();
        let mut unstored = Vec::new();
        for state in partitions.iter_mut() {
            if state.settled > state.stored {
                state.stored = state.settled;
                unstored.push((state.topic.clone(), state.partition, state.settled));
            }
        }
        unstored
    }

    /// Messages delivered and not yet acknowledged, over all partitions.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        let partitions = self.lock();
        let counted = partitions.iter().map(|s| s.unsettled).sum();
        let seen: usize = partitions
            .iter()
            .map(|s| s.window.iter().filter(|e| !e.1).count())
            .sum();
        assert_eq!(counted, seen, "the unsettled count is kept in step");
        counted
    }
}

/// The partition found last, so that a run of one partition's messages (a fetched batch, a
/// lane's acknowledgements) looks its state up once, not once per message.
#[derive(Default)]
struct Last {
    /// The index of the state, the partition and where its topic's name was read from:
    /// messages share their topic's string, so the same address means the same name.
    found: Option<(usize, i32, *const u8, usize)>,
}

impl Last {
    fn find<'s>(
        &mut self,
        partitions: &'s mut [PartitionState],
        topic: &str,
        partition: i32,
    ) -> Option<&'s mut PartitionState> {
        let here = (partition, topic.as_ptr(), topic.len());
        let index = match self.found {
            Some((i, p, at, len)) if (p, at, len) == here => i,
            _ => {
                let i = partitions.iter().position(|s| s.is(topic, partition))?;
                self.found = Some((i, partition, topic.as_ptr(), topic.len()));
                i
            }
        };
        partitions.get_mut(index)
    }
}

/// Whether a partition found full is down to its mark (then no longer marked).
fn has_room_again(state: &mut PartitionState) -> bool {
    match state.full {
        Some(mark) if state.unsettled <= mark => {
            state.full = None;
            true
        }
        _ => false,
    }
}

/// Settles a message of this partition, moving its next-to-read offset as far as every
/// earlier delivered message is settled.
fn settle(state: &mut PartitionState, offset: i64) -> Acked {
    // Most acknowledgements settle the partition's lowest unsettled message: no search.
    let at = match state.window.front() {
        Some(&(first, _)) if first == offset => Ok(0),
        _ => state.window.binary_search_by_key(&offset, |e| e.0),
    };
    match at {
        Ok(i) if !state.window[i].1 => {
            state.window[i].1 = true;
            state.unsettled -= 1;
        }
        _ => return Acked::Stale,
    }
    while state.window.front().is_some_and(|e| e.1) {
        state.window.pop_front();
    }
    let next = state.window.front().map_or(state.next_unseen, |e| e.0);
    if next <= state.settled {
        return Acked::Held;
    }
    state.settled = next;
    Acked::Advanced(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> Message {
        Message::new(topic, "").with_position(Position::Partition { partition, offset })
    }

    fn deliver(t: &OffsetTracker, messages: &[(&str, i32, i64)]) -> usize {
        let mut messages = messages
            .iter()
            .map(|(topic, p, o)| Arc::new(at(topic, *p, *o)))
            .collect();
        t.deliver(&mut messages);
        messages.len()
    }

    fn advanced(next: i64) -> Acked {
        Acked::Advanced(next)
    }

    fn ack(t: &OffsetTracker, topic: &str, partition: i32, offset: i64) -> Acked {
        t.ack(topic, partition, offset)
    }

    #[test]
    fn in_order_acks_advance_to_the_next_offset() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        assert_eq!(deliver(&t, &[("t", 0, 10), ("t", 0, 11), ("t", 0, 12)]), 3);
        assert_eq!(ack(&t, "t", 0, 10), advanced(11));
        assert_eq!(ack(&t, "t", 0, 11), advanced(12));
        assert_eq!(ack(&t, "t", 0, 12), advanced(13));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.take_unstored(), vec![("t".to_owned(), 0, 13)]);
        assert_eq!(t.take_unstored(), vec![], "taken once");
    }

    #[test]
    fn a_later_ack_never_passes_an_unsettled_message() {
        let t = OffsetTracker::default();
        t.assign([("t", 0), ("t", 1)]);
        for o in 0..4 {
            deliver(&t, &[("t", 0, o), ("t", 1, o)]);
        }
        // Offset 1 of partition 0 is being retried; 2 and 3 finish first.
        assert_eq!(ack(&t, "t", 0, 0), advanced(1));
        assert_eq!(ack(&t, "t", 0, 2), Acked::Held);
        assert_eq!(ack(&t, "t", 0, 3), Acked::Held);
        // Meanwhile partition 1 goes on by itself.
        for o in 0..4 {
            assert_eq!(ack(&t, "t", 1, o), advanced(o + 1));
        }
        let mut unstored = t.take_unstored();
        unstored.sort();
        assert_eq!(
            unstored,
            vec![("t".to_owned(), 0, 1), ("t".to_owned(), 1, 4)]
        );
        // Once the retried message settles, everything up to 3 is done.
        assert_eq!(ack(&t, "t", 0, 1), advanced(4));
        assert_eq!(t.take_unstored(), vec![("t".to_owned(), 0, 4)]);
    }

    #[test]
    fn a_batch_mixing_partitions_and_topics_settles_each_on_its_own() {
        let t = OffsetTracker::default();
        t.assign([("t", 0), ("t", 1), ("u", 0)]);
        // Interleaved, as a fetched batch may be, each message with a topic string of its
        // own; the acknowledgements below share the literals' strings.
        let mut delivered: Vec<Arc<Message>> = [
            ("t", 0, 5),
            ("u", 0, 7),
            ("t", 0, 6),
            ("t", 1, 2),
            ("t", 0, 7),
            ("x", 0, 1),
        ]
        .iter()
        .map(|&(topic, p, o)| Arc::new(at(topic, p, o)))
        .collect();
        t.deliver(&mut delivered);
        assert_eq!(
            delivered.len(),
            5,
            "the unassigned partition's message is not handed out"
        );
        let stale = t.ack_all([
            ("t", 0, 5),
            ("t", 0, 6),
            ("u", 0, 7),
            ("t", 1, 2),
            ("x", 0, 1),
            ("t", 0, 6),
        ]);
        assert_eq!(stale, 2, "the unassigned partition's, and the repeated one");
        let mut unstored = t.take_unstored();
        unstored.sort();
        assert_eq!(
            unstored,
            vec![
                ("t".to_owned(), 0, 7),
                ("t".to_owned(), 1, 3),
                ("u".to_owned(), 0, 8)
            ],
            "offset 7 of t/0 is still in flight"
        );
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn an_offset_delivered_out_of_order_is_kept_in_order() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        deliver(&t, &[("t", 0, 4), ("t", 0, 2), ("t", 0, 2)]);
        assert_eq!(t.in_flight(), 2, "a repeated delivery is one message");
        assert_eq!(ack(&t, "t", 0, 4), advanced(2));
        assert_eq!(ack(&t, "t", 0, 2), advanced(5));
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        deliver(&t, &[("t", 0, 5), ("t", 0, 9)]);
        assert_eq!(ack(&t, "t", 0, 9), advanced(5));
        assert_eq!(ack(&t, "t", 0, 5), advanced(10));
    }

    #[test]
    fn revocation_returns_what_is_unstored_and_later_acks_are_stale() {
        let t = OffsetTracker::default();
        t.assign([("t", 0), ("t", 1)]);
        deliver(&t, &[("t", 0, 0), ("t", 0, 1), ("t", 1, 0)]);
        assert_eq!(ack(&t, "t", 1, 0), advanced(1));
        assert_eq!(ack(&t, "t", 1, 0), Acked::Stale, "acknowledged twice");
        assert_eq!(ack(&t, "t", 0, 0), advanced(1));
        assert_eq!(t.revoke([("t", 0)]).unstored, vec![("t".to_owned(), 0, 1)]);
        assert_eq!(ack(&t, "t", 0, 1), Acked::Stale);
        assert_eq!(
            deliver(&t, &[("t", 0, 2), ("other", 0, 1)]),
            0,
            "messages of partitions not assigned must not be handed out"
        );
        assert_eq!(t.take_unstored(), vec![("t".to_owned(), 1, 1)]);
        // Assigned again: a fresh start; the old in-flight offset is not remembered.
        t.assign([("t", 0)]);
        assert_eq!(ack(&t, "t", 0, 1), Acked::Stale);
        assert_eq!(t.revoke([("t", 0)]), Revoked::default());
    }

    #[test]
    fn drain_waits_for_the_revoked_partitions_in_flight_messages() {
        let t = Arc::new(OffsetTracker::default());
        t.assign([("t", 0), ("t", 1)]);
        assert_eq!(deliver(&t, &[("t", 0, 5), ("t", 0, 6), ("t", 1, 9)]), 3);
        let revoked = [("t".to_owned(), 0)];
        // Nothing acknowledges: the wait ends at its timeout with both still unsettled.
        assert_eq!(t.drain(&revoked, Duration::from_millis(30)), 2);
        // Acknowledged from another thread while it waits: it returns as soon as they are,
        // whatever the other partition holds.
        let acker = {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                ack(&t, "t", 0, 6);
                std::thread::sleep(Duration::from_millis(50));
                ack(&t, "t", 0, 5);
            })
        };
        let started = Instant::now();
        assert_eq!(t.drain(&revoked, Duration::from_secs(10)), 0);
        assert!(started.elapsed() < Duration::from_secs(5));
        acker.join().unwrap();
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn a_partition_holding_too_much_is_paused_and_resumed_at_half() {
        let t = OffsetTracker::default();
        t.assign([("t", 0), ("t", 1)]);
        for o in 0..3 {
            deliver(&t, &[("t", 0, o), ("t", 1, o)]);
        }
        assert_eq!(
            t.flow(4, 100, Duration::ZERO, Instant::now()),
            Flow::default(),
            "3 unsettled in each"
        );
        deliver(&t, &[("t", 1, 3), ("t", 1, 4)]);
        let pause_1 = Flow {
            pause: vec![("t".to_owned(), 1)],
            resume: vec![],
            paused: true,
        };
        let still_paused = Flow {
            paused: true,
            ..Flow::default()
        };
        assert_eq!(
            t.flow(4, 100, Duration::ZERO, Instant::now()),
            pause_1,
            "5 unsettled in partition 1"
        );
        assert_eq!(
            t.flow(4, 100, Duration::ZERO, Instant::now()),
            still_paused,
            "paused once"
        );
        ack(&t, "t", 1, 0);
        ack(&t, "t", 1, 1);
        assert_eq!(
            t.flow(4, 100, Duration::ZERO, Instant::now()),
            still_paused,
            "3 unsettled: above half"
        );
        ack(&t, "t", 1, 2);
        let resumed = t.flow(4, 100, Duration::ZERO, Instant::now());
        assert_eq!(resumed.resume, vec![("t".to_owned(), 1)]);
        assert!(!resumed.paused);
        assert_eq!(t.revoke([("t", 1)]).paused, Vec::<(String, i32)>::new());
    }

    #[test]
    fn the_span_since_the_lowest_unsettled_message_is_bounded_too() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        for o in 0..4 {
            deliver(&t, &[("t", 0, o)]);
        }
        // The first message is slow; the three after it are handled: one unsettled, four
        // offsets held since it.
        for o in 1..4 {
            ack(&t, "t", 0, o);
        }
        assert_eq!(
            t.flow(100, 4, Duration::ZERO, Instant::now()).pause,
            vec![("t".to_owned(), 0)]
        );
        // Revoked while paused: to be resumed.
        assert_eq!(t.revoke([("t", 0)]).paused, vec![("t".to_owned(), 0)]);
    }

    #[test]
    fn messages_fetched_before_a_revocation_are_not_handed_out_after_it() {
        let t = OffsetTracker::default();
        t.assign([("t", 0), ("t", 1)]);
        let mut batch: Vec<Arc<Message>> = vec![Arc::new(at("t", 0, 5)), Arc::new(at("t", 1, 5))];
        let generation = t.deliver(&mut batch);
        let mut same = batch.clone();
        t.still_owned(generation, &mut same);
        assert_eq!(same.len(), 2, "no rebalance since");
        // Partition 1 is revoked, partition 0 revoked and assigned again (an eager
        // rebalance): neither message is handed out; a batch fetched since is.
        t.revoke([("t", 0), ("t", 1)]);
        t.assign([("t", 0)]);
        let mut stale = batch.clone();
        t.still_owned(generation, &mut stale);
        assert!(stale.is_empty(), "{stale:?}");
        let mut fresh = vec![Arc::new(at("t", 0, 5))];
        let now = t.deliver(&mut fresh);
        t.assign([("t", 2)]);
        t.still_owned(now, &mut fresh);
        assert_eq!(fresh.len(), 1, "partition 0 was not revoked since");
    }

    #[test]
    fn a_full_partition_whose_offset_moves_is_not_paused() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        let start = Instant::now();
        let stuck_after = Duration::from_secs(1);
        for o in 0..4 {
            deliver(&t, &[("t", 0, o)]);
        }
        assert_eq!(t.room("t", 0, 4, 100), Some(0), "full");
        assert_eq!(t.room("t", 0, 8, 100), Some(4));
        assert_eq!(t.room("t", 1, 4, 100), None, "not assigned");
        assert!(t.flow(4, 100, stuck_after, start).pause.is_empty());
        // Its offset moves: full again, but not stuck.
        ack(&t, "t", 0, 0);
        deliver(&t, &[("t", 0, 4)]);
        let later = start + Duration::from_millis(1500);
        assert!(t.flow(4, 100, stuck_after, later).pause.is_empty());
        // Nothing settles for a second: paused.
        let stuck = later + stuck_after;
        assert_eq!(
            t.flow(4, 100, stuck_after, stuck).pause,
            vec![("t".to_owned(), 0)]
        );
    }

    #[test]
    fn a_full_partition_calls_back_once_it_has_room_again() {
        let t = OffsetTracker::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        t.on_room({
            let calls = Arc::clone(&calls);
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
            }
        });
        t.assign([("t", 0)]);
        for o in 0..8 {
            deliver(&t, &[("t", 0, o)]);
        }
        ack(&t, "t", 0, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "never found full");
        assert_eq!(t.room("t", 0, 7, 100), Some(0));
        ack(&t, "t", 0, 1);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "6 unsettled: above 3/4 of 7"
        );
        t.ack_all([("t", 0, 2)]);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "5 unsettled");
        ack(&t, "t", 0, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "once");
    }
}
