//! An in-process harness for users' tests: the registered handlers run on a fresh memory
//! broker through the real retry and dead-letter pipeline. Use it under paused time
//! (`#[tokio::test(start_paused = true)]`) and back-offs take no real time.
//!
//! ```
//! # async fn demo() {
//! use messaging_core::testing::TestHarness;
//! let harness = TestHarness::builder().start().await.unwrap();
//! harness.send("orders.created", &serde_json::json!({"order_id": 1})).await.unwrap();
//! harness.wait_idle().await;
//! assert!(harness.dlq("orders.created").is_empty());
//! harness.shutdown().await;
//! # }
//! ```

use std::sync::Arc;

use serde::Serialize;

use crate::config::Config;
use crate::dlq::{DeadLetterRecord, resolve_dlq_topic};
use crate::error::Error;
use crate::memory::MemoryBroker;
use crate::message::OutgoingMessage;
use crate::metrics::HandlerMetrics;
use crate::producer::Producer;
use crate::runtime::{Runtime, RuntimeBuilder};

/// Builds a [`TestHarness`]: a [`RuntimeBuilder`] on a fresh memory broker.
pub struct HarnessBuilder {
    broker: MemoryBroker,
    runtime: RuntimeBuilder,
}

impl HarnessBuilder {
    /// Adjusts the runtime (state, handlers in code, topics, concurrency …).
    pub fn runtime(mut self, f: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) -> Self {
        self.runtime = f(self.runtime);
        self
    }

    /// Registers a value for `State<T>` extractors.
    pub fn state<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.runtime(|r| r.state(value))
    }

    /// Starts the handlers.
    pub async fn start(self) -> Result<TestHarness, Error> {
        let runtime = self
            .runtime
            .broker(Arc::new(self.broker.clone()))
            .install_global_producer(false)
            .start()
            .await?;
        Ok(TestHarness {
            broker: self.broker,
            runtime,
        })
    }
}

/// Registered handlers running on a private memory broker.
pub struct TestHarness {
    broker: MemoryBroker,
    runtime: Runtime,
}

impl std::fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHarness").finish_non_exhaustive()
    }
}

impl TestHarness {
    /// A builder with every registered handler, concurrency 1 and a test configuration.
    pub fn builder() -> HarnessBuilder {
        let config = Config {
            backend: "memory".to_owned(),
            source: "test".to_owned(),
            ..Config::default()
        };
        HarnessBuilder {
            broker: MemoryBroker::new(),
            runtime: Runtime::builder().config(config).concurrency(1),
        }
    }

    /// The memory broker, to inspect topics.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// A producer on the harness's broker.
    pub fn producer(&self) -> &Producer {
        self.runtime.producer()
    }

    /// Publishes `message` as JSON on `topic` (no envelope).
    pub async fn send<T: Serialize + ?Sized>(&self, topic: &str, message: &T) -> Result<(), Error> {
        self.producer().send(topic, message).await
    }

    /// Publishes an enveloped event.
    pub async fn publish_event<T: Serialize + ?Sized>(
        &self,
        name: &str,
        data: &T,
        topic: &str,
    ) -> Result<(), Error> {
        self.producer()
            .publish_event(name, data, topic)
            .await
            .map(drop)
    }

    /// Publishes a message built by hand (any bytes, any headers).
    pub async fn send_raw(&self, message: OutgoingMessage) -> Result<(), Error> {
        self.producer().send_raw(message).await
    }

    /// Waits until every message was handled and acknowledged (retries and DLQ writes
    /// included).
    pub async fn wait_idle(&self) {
        self.broker.wait_idle().await;
    }

    /// The DLQ records of `topic` (read from `<topic>.dlq`, or from the configuration's
    /// `dlq_topic`; a handler's own `dlq` is read with [`TestHarness::dlq_topic`]).
    pub fn dlq(&self, topic: &str) -> Vec<DeadLetterRecord> {
        let global = self.producer().config().dlq_topic.as_deref();
        self.dlq_topic(&resolve_dlq_topic(topic, None, global))
            .into_iter()
            .filter(|r| r.original.topic == topic)
            .collect()
    }

    /// The DLQ records on a DLQ topic named explicitly.
    pub fn dlq_topic(&self, dlq_topic: &str) -> Vec<DeadLetterRecord> {
        self.broker
            .waiting(dlq_topic)
            .iter()
            .map(|m| {
                DeadLetterRecord::from_bytes(&m.payload).expect("a DLQ topic holds DLQ records")
            })
            .collect()
    }

    /// How often the handler named `name` was called (every attempt).
    pub fn attempts(&self, name: &str) -> u64 {
        self.sum(name, HandlerMetrics::attempts)
    }

    /// How many messages the handler named `name` handled successfully.
    pub fn succeeded(&self, name: &str) -> u64 {
        self.sum(name, HandlerMetrics::succeeded)
    }

    /// How many messages the handler named `name` dead-lettered.
    pub fn dead_lettered(&self, name: &str) -> u64 {
        self.sum(name, HandlerMetrics::dead_lettered)
    }

    fn sum(&self, name: &str, f: impl Fn(&HandlerMetrics) -> u64) -> u64 {
        self.runtime
            .handler_metrics(name)
            .iter()
            .map(|m| f(m))
            .sum()
    }

    /// Stops the handlers.
    pub async fn shutdown(self) {
        let _ = self.runtime.shutdown().await;
    }
}
