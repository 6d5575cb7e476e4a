//! The conformance suite on the in-memory broker.

use std::sync::Arc;

use messaging_core::MemoryBroker;
use messaging_tests::ConnectFuture;

// One broker per process, like one server: every "connection" reaches the same topics.
fn connect() -> ConnectFuture {
    Box::pin(async { Arc::new(MemoryBroker::shared()) as Arc<dyn messaging_core::Broker> })
}

messaging_tests::suite!(connect);
