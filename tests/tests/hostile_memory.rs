//! Hostile input on the in-memory broker, appended with `MemoryBroker::append` (not through
//! our producer). The memory broker carries text headers: values that are not UTF-8 are
//! converted lossily on the way in, as every real broker crate does on delivery.
//!
//! Run with: cargo test -p messaging-tests --test hostile_memory

use std::sync::Arc;

use messaging_core::{BoxFuture, MemoryBroker, OutgoingMessage};
use messaging_tests::{ConnectFuture, Limits, RawMessage, RawSend};

fn connect() -> ConnectFuture {
    Box::pin(async { Arc::new(MemoryBroker::shared()) as Arc<dyn messaging_core::Broker> })
}

struct Append(MemoryBroker);

impl RawSend for Append {
    fn send(&self, message: RawMessage) -> BoxFuture<'_, ()> {
        let mut out = OutgoingMessage::new(message.topic, message.payload);
        out.key = message.key.map(messaging_core::Key::from);
        out.headers.extend(message.headers);
        self.0.append(out);
        Box::pin(async {})
    }
}

fn raw_sender() -> BoxFuture<'static, Box<dyn RawSend>> {
    Box::pin(async { Box::new(Append(MemoryBroker::shared())) as Box<dyn RawSend> })
}

messaging_tests::hostile_suite!(connect, raw_sender, Limits::TEN_MEGABYTES);
