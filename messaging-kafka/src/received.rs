//! Turning fetched records into messages without a trip to the allocator per message.
//!
//! The consumer task allocates each message and the handlers' lanes, on other threads, drop
//! it: glibc's malloc serves that pattern from its slow paths, and it was the largest single
//! cost of a consumed message (BENCHMARKS.md, Kafka). So small payloads are copied into
//! shared chunks, and the messages handed out are kept and reused once every other holder
//! has dropped them: the lanes' drop is then a reference count, and the allocation stays on
//! the consumer's thread.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use messaging_core::{Message, TopicNames};

use crate::convert::fill;

/// Payloads up to this size share a chunk; larger ones get their own allocation.
const SHARED_PAYLOAD_MAX: usize = 1024;

/// The size of a shared chunk: what one retained small message can keep alive at most.
const CHUNK: usize = 64 * 1024;

/// How many handed-out messages are kept for reuse: more than a consumer has in flight
/// (a batch and the lanes' queues), so that the oldest is usually done when it comes round.
/// What they keep alive is bounded: each holds at most [`SHARED_PAYLOAD_MAX`] of payload.
const KEPT: usize = 2048;

/// Where received payloads are copied: small ones into shared 64 KiB chunks, one allocation
/// per chunk rather than one per message. A payload kept alive (a message in back-off, a
/// `Bytes` a handler keeps) keeps its chunk alive, at most [`CHUNK`] bytes.
#[derive(Default)]
struct Payloads {
    chunk: BytesMut,
}

impl Payloads {
    fn copy(&mut self, payload: &[u8]) -> Bytes {
        if payload.len() > SHARED_PAYLOAD_MAX {
            return Bytes::copy_from_slice(payload);
        }
        if self.chunk.capacity() - self.chunk.len() < payload.len() {
            self.chunk = BytesMut::with_capacity(CHUNK);
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

/// Makes the messages of one consumer.
#[derive(Default)]
pub(crate) struct Received {
    payloads: Payloads,
    /// Messages handed out, oldest first; one is reused once this is its only holder.
    handed_out: VecDeque<Arc<Message>>,
}

impl Received {
    /// A received record as a message.
    pub(crate) fn make(
        &mut self,
        record: &impl rdkafka::Message,
        names: &TopicNames,
    ) -> Arc<Message> {
        let payload = self.payloads.copy(record.payload().unwrap_or_default());
        let small = payload.len() <= SHARED_PAYLOAD_MAX;
        let mut message = self.reusable().unwrap_or_default();
        // Unique (reused only when nobody else holds it, or new), so this never copies.
        fill(Arc::make_mut(&mut message), record, names, payload);
        if small {
            // A large payload is not kept alive for reuse's sake.
            if self.handed_out.len() == KEPT {
                // The oldest is still held (a message in back-off, or kept by a handler):
                // give up on it, it is freed by its last holder.
                self.handed_out.pop_front();
            }
            self.handed_out.push_back(Arc::clone(&message));
        }
        message
    }

    /// The oldest message handed out, if nobody else holds it any more.
    fn reusable(&mut self) -> Option<Arc<Message>> {
        let front = self.handed_out.front_mut()?;
        Arc::get_mut(front)?;
        self.handed_out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    fn record(offset: i64, key: Option<&str>, payload: &[u8]) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            key.map(|k| k.as_bytes().to_vec()),
            "orders".to_owned(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    #[test]
    fn small_payloads_share_a_chunk_and_stay_intact() {
        let mut payloads = Payloads::default();
        let copies: Vec<Bytes> = (0..1000u32)
            .map(|i| payloads.copy(format!("payload {i}").as_bytes()))
            .collect();
        for (i, copy) in copies.iter().enumerate() {
            assert_eq!(&copy[..], format!("payload {i}").as_bytes());
        }
        let distance = copies[1].as_ptr() as usize - copies[0].as_ptr() as usize;
        assert_eq!(
            distance,
            copies[0].len(),
            "one after the other in one chunk"
        );
        let large = vec![7u8; SHARED_PAYLOAD_MAX + 1];
        assert_eq!(payloads.copy(&large), large);
        assert!(payloads.copy(&[]).is_empty());
    }

    #[test]
    fn a_message_is_reused_only_once_nobody_holds_it() {
        let names = TopicNames::new(["orders"]);
        let mut received = Received::default();
        let first = received.make(&record(0, Some("a"), b"one"), &names);
        let first_at = Arc::as_ptr(&first);
        // Still held: the next record gets a message of its own.
        let second = received.make(&record(1, None, b"two"), &names);
        assert_ne!(Arc::as_ptr(&second), first_at);
        assert_eq!(first.key_str(), Some("a"));
        assert_eq!(&first.payload[..], b"one");
        drop(first);
        let third = received.make(&record(2, Some("c"), b"three"), &names);
        assert_eq!(Arc::as_ptr(&third), first_at, "the first, reused");
        assert_eq!(third.key_str(), Some("c"));
        assert_eq!(&third.payload[..], b"three");
        assert_eq!(third.position.to_string(), "partition 0 offset 2");
        assert_eq!(second.key, None);
        assert_eq!(&second.payload[..], b"two", "untouched while held");
    }

    #[test]
    fn a_message_held_for_ever_holds_nothing_up() {
        let names = TopicNames::new(["orders"]);
        let mut received = Received::default();
        let kept = received.make(&record(0, None, b"kept"), &names);
        for offset in 1..=(KEPT as i64 + 10) {
            drop(received.make(&record(offset, None, b"x"), &names));
        }
        assert!(received.handed_out.len() <= KEPT);
        assert!(
            !received.handed_out.iter().any(|m| Arc::ptr_eq(m, &kept)),
            "given up once the others came round"
        );
        assert_eq!(&kept.payload[..], b"kept");
        let large = received.make(&record(0, None, &[1; SHARED_PAYLOAD_MAX + 1]), &names);
        assert!(
            !received.handed_out.iter().any(|m| Arc::ptr_eq(m, &large)),
            "a large payload is not kept for reuse"
        );
    }
}
