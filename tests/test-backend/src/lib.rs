//! A broker crate made only of the seam every broker goes through: linking it makes
//! `MESSAGING_BACKEND=loopback` selectable, and it reads its own variables, which
//! `messaging-core` has never heard of. Its messages stay in the process (an in-memory broker
//! per namespace), so tests need no server.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `LOOPBACK_URL` | `loop://[user[:password]@]namespace`: brokers of one namespace share their messages | `loop://default` |
//!
//! As with the real brokers, a `LOOPBACK_URL` that is set but empty, or not a `loop://` URL,
//! fails the connection at once with [`BrokerError::Config`] naming it, and the connection
//! loop names the URL with its password masked.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use messaging_core::config::mask_url;
use messaging_core::{
    BoxFuture, Broker, BrokerError, BrokerFactory, Config, Consumer, DlqSnapshot, MemoryBroker,
    Message, OutgoingMessage, Subscription,
};

/// The name the backend is registered under.
pub const NAME: &str = "loopback";

/// The URL when `LOOPBACK_URL` is not set.
pub const DEFAULT_URL: &str = "loop://default";

const URL_VARIABLE: &str = "LOOPBACK_URL";

/// A broker whose messages stay in this process, shared by every broker of its namespace.
#[derive(Clone)]
pub struct LoopbackBroker {
    namespace: String,
    inner: MemoryBroker,
}

impl LoopbackBroker {
    /// The broker of `namespace` (the same messages as every other one of it).
    pub fn of(namespace: &str) -> Self {
        static NAMESPACES: Mutex<Option<HashMap<String, MemoryBroker>>> = Mutex::new(None);
        let mut namespaces = NAMESPACES.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = namespaces
            .get_or_insert_with(HashMap::new)
            .entry(namespace.to_owned())
            .or_default()
            .clone();
        Self {
            namespace: namespace.to_owned(),
            inner,
        }
    }

    /// The namespace it was connected to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl std::fmt::Debug for LoopbackBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackBroker")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The namespace `config`'s settings name, or the variable's error.
fn namespace(config: &Config) -> Result<String, BrokerError> {
    let url = config
        .settings
        .get_required(NAME, URL_VARIABLE)?
        .unwrap_or(DEFAULT_URL)
        .trim();
    let invalid = |why: &str| {
        BrokerError::config(
            NAME,
            URL_VARIABLE,
            format!(
                "`{}` {why}; write loop://[user[:password]@]namespace",
                mask_url(url)
            ),
        )
    };
    let rest = url
        .strip_prefix("loop://")
        .ok_or_else(|| invalid("is not a loop:// URL"))?;
    let namespace = rest.rsplit('@').next().unwrap_or_default();
    if namespace.is_empty() {
        return Err(invalid("names no namespace"));
    }
    Ok(namespace.to_owned())
}

fn connect(config: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    Box::pin(
        async move { Ok(Arc::new(LoopbackBroker::of(&namespace(config)?)) as Arc<dyn Broker>) },
    )
}

fn target(config: &Config) -> String {
    mask_url(
        config
            .settings
            .get_non_blank(URL_VARIABLE)
            .unwrap_or(DEFAULT_URL),
    )
}

inventory::submit! {
    BrokerFactory::new(NAME, connect)
        .variables(&["LOOPBACK_"])
        .target(target)
}

impl Broker for LoopbackBroker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish(message)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        self.inner.subscribe(subscription)
    }

    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.declare_topics(topics)
    }

    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        self.inner.browse(topic, limit)
    }

    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        self.inner.dlq_snapshot(topic, limit)
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.flush(timeout)
    }
}
