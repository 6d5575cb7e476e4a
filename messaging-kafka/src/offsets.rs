//! Which offset may be stored for commit. Kafka commits one offset per partition, "the next
//! to read", so an acknowledgement can only move it past messages that are all settled.
//! Acknowledgements may come out of order (a message being retried while later ones of its
//! partition were already fetched, or a handler of another lane finishing first); the stored
//! offset is therefore the lowest unsettled offset of the partition, never more.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acked {
    /// The partition's stored offset moved to this one (the next to read).
    Stored(i64),
    /// Recorded; an earlier message of the partition is still unsettled.
    Held,
    /// Not delivered under the current assignment (the partition was revoked since, or the
    /// message was acknowledged already): nothing stored, the new owner reads it again.
    Stale,
}

#[derive(Debug)]
struct PartitionState {
    /// Delivered and not yet acknowledged.
    in_flight: BTreeSet<i64>,
    /// One past the highest offset delivered.
    next_unseen: i64,
    /// The offset last stored (the next to read), or -1.
    stored: i64,
}

/// Per assigned partition, the delivered and settled offsets of one consumer.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    topics: Mutex<HashMap<String, HashMap<i32, PartitionState>>>,
}

impl OffsetTracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<i32, PartitionState>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking newly assigned partitions afresh.
    pub(crate) fn assign<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut topics = self.lock();
        for (topic, partition) in partitions {
            topics.entry(topic.to_owned()).or_default().insert(
                partition,
                PartitionState {
                    in_flight: BTreeSet::new(),
                    next_unseen: -1,
                    stored: -1,
                },
            );
        }
    }

    /// Forgets revoked partitions: later acknowledgements of their messages are [`Acked::Stale`].
    pub(crate) fn revoke<'a>(&self, partitions: impl IntoIterator<Item = (&'a str, i32)>) {
        let mut topics = self.lock();
        for (topic, partition) in partitions {
            if let Some(parts) = topics.get_mut(topic) {
                parts.remove(&partition);
            }
        }
    }

    /// Records a delivered message. False when its partition is not assigned (a message
    /// fetched before a revocation): it must not be handed out.
    pub(crate) fn deliver(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let mut topics = self.lock();
        let Some(state) = topics.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            return false;
        };
        state.in_flight.insert(offset);
        state.next_unseen = state.next_unseen.max(offset + 1);
        true
    }

    /// Settles a message and, when that moves the partition's low-water mark, calls `store`
    /// with the new next-to-read offset. `store` runs under the tracker's lock so two
    /// acknowledgements of one partition cannot store out of order; it must be quick (it is
    /// librdkafka's local offset store, no I/O).
    pub(crate) fn ack<E>(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        store: impl FnOnce(i64) -> Result<(), E>,
    ) -> Result<Acked, E> {
        let mut topics = self.lock();
        let Some(state) = topics.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            return Ok(Acked::Stale);
        };
        if !state.in_flight.remove(&offset) {
            return Ok(Acked::Stale);
        }
        let next = state
            .in_flight
            .first()
            .copied()
            .unwrap_or(state.next_unseen);
        if next <= state.stored {
            return Ok(Acked::Held);
        }
        store(next)?;
        state.stored = next;
        Ok(Acked::Stored(next))
    }

    /// Messages delivered and not yet acknowledged, over all partitions.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock()
            .values()
            .flat_map(HashMap::values)
            .map(|s| s.in_flight.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn ack(t: &OffsetTracker, topic: &str, partition: i32, offset: i64) -> Acked {
        let mut stored = None;
        let outcome = t
            .ack(topic, partition, offset, |o| {
                stored = Some(o);
                Ok::<_, Infallible>(())
            })
            .unwrap();
        if let Acked::Stored(o) = outcome {
            assert_eq!(
                stored,
                Some(o),
                "Stored must mean `store` ran with that offset"
            );
        } else {
            assert_eq!(stored, None, "{outcome:?} must not store");
        }
        outcome
    }

    #[test]
    fn in_order_acks_store_the_next_offset() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        for o in 10..13 {
            assert!(t.deliver("t", 0, o));
        }
        assert_eq!(ack(&t, "t", 0, 10), Acked::Stored(11));
        assert_eq!(ack(&t, "t", 0, 11), Acked::Stored(12));
        assert_eq!(ack(&t, "t", 0, 12), Acked::Stored(13));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_later_ack_never_passes_an_unsettled_message() {
        let t = OffsetTracker::default();
        t.assign([("t", 0), ("t", 1)]);
        for o in 0..4 {
            t.deliver("t", 0, o);
            t.deliver("t", 1, o);
        }
        // Offset 1 of partition 0 is being retried; 2 and 3 finish first.
        assert_eq!(ack(&t, "t", 0, 0), Acked::Stored(1));
        assert_eq!(ack(&t, "t", 0, 2), Acked::Held);
        assert_eq!(ack(&t, "t", 0, 3), Acked::Held);
        // Meanwhile partition 1 goes on by itself.
        for o in 0..4 {
            assert_eq!(ack(&t, "t", 1, o), Acked::Stored(o + 1));
        }
        // Once the retried message settles, everything up to 3 is done.
        assert_eq!(ack(&t, "t", 0, 1), Acked::Stored(4));
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        t.deliver("t", 0, 5);
        t.deliver("t", 0, 9);
        assert_eq!(ack(&t, "t", 0, 9), Acked::Stored(5));
        assert_eq!(ack(&t, "t", 0, 5), Acked::Stored(10));
    }

    #[test]
    fn revoked_partitions_and_repeated_acks_are_stale() {
        let t = OffsetTracker::default();
        t.assign([("t", 0), ("t", 1)]);
        t.deliver("t", 0, 0);
        t.deliver("t", 1, 0);
        assert_eq!(ack(&t, "t", 1, 0), Acked::Stored(1));
        assert_eq!(ack(&t, "t", 1, 0), Acked::Stale);
        t.revoke([("t", 0)]);
        assert_eq!(ack(&t, "t", 0, 0), Acked::Stale);
        assert!(
            !t.deliver("t", 0, 1),
            "a revoked partition's message must not be handed out"
        );
        assert!(!t.deliver("other", 0, 1));
        // Assigned again: a fresh start; the old in-flight offset is not remembered.
        t.assign([("t", 0)]);
        assert_eq!(ack(&t, "t", 0, 0), Acked::Stale);
    }

    #[test]
    fn a_failed_store_leaves_the_mark_for_the_next_ack() {
        let t = OffsetTracker::default();
        t.assign([("t", 0)]);
        t.deliver("t", 0, 0);
        t.deliver("t", 0, 1);
        assert!(t.ack("t", 0, 0, |_| Err("store failed")).is_err());
        assert_eq!(ack(&t, "t", 0, 1), Acked::Stored(2));
    }
}
