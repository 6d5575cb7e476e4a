//! Publishing: [`Producer::send`] puts a message on the wire as it is, [`Producer::publish_event`]
//! wraps it in the envelope; both wait for the broker's acknowledgement. [`Producer::fire`] is
//! the background path of `#[event]`: it never fails the caller, counts what it drops, and is
//! waited for by [`Producer::flush`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use crate::broker::{Broker, connect_once};
use crate::config::{Config, current_config};
use crate::envelope::{Event, TypedEvent};
use crate::error::{BrokerError, Error};
use crate::handler::BoxFuture;
use crate::message::{Headers, OutgoingMessage, header};
use crate::metrics::metrics;
use crate::trace;

/// Publishes messages; cheap to clone. Obtain the process-wide one with [`get_producer`], or
/// take one as a handler argument.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    broker: OnceCell<Arc<dyn Broker>>,
    config: Config,
    pending: AtomicUsize,
    settled: Notify,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("backend", &self.inner.config.backend)
            .field("connected", &self.inner.broker.initialized())
            .finish()
    }
}

/// Key and headers for [`Producer::send_with`].
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// The message key (Kafka partitioning; a header elsewhere).
    pub key: Option<String>,
    /// Extra headers.
    pub headers: Headers,
}

impl SendOptions {
    /// Options with this key.
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            headers: Headers::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }
}

impl Producer {
    /// A producer on an already connected broker.
    pub fn new(broker: Arc<dyn Broker>, config: Config) -> Self {
        let producer = Self::lazy(config);
        let _ = producer.inner.broker.set(broker);
        producer
    }

    /// A producer that connects to the configured broker on first use.
    pub fn lazy(config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker: OnceCell::new(),
                config,
                pending: AtomicUsize::new(0),
                settled: Notify::new(),
            }),
        }
    }

    /// The broker, connecting on first use.
    pub async fn broker(&self) -> Result<&Arc<dyn Broker>, Error> {
        if let Some(broker) = self.inner.broker.get() {
            return Ok(broker);
        }
        // Boxed: the connecting future is large, and every publish's future would carry
        // its room (BENCHMARKS.md, Kafka produce).
        Box::pin(
            self.inner
                .broker
                .get_or_try_init(|| connect_once(&self.inner.config)),
        )
        .await
    }

    /// The configuration it was made with.
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The service name written into envelopes.
    pub fn source(&self) -> &str {
        &self.inner.config.source
    }

    /// Publishes `message` as JSON, without an envelope, and waits for the acknowledgement.
    pub async fn send<T: Serialize + ?Sized>(&self, topic: &str, message: &T) -> Result<(), Error> {
        self.send_with(topic, message, SendOptions::default()).await
    }

    /// [`Producer::send`] with a key and headers.
    pub async fn send_with<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
        options: SendOptions,
    ) -> Result<(), Error> {
        let payload = serde_json::to_vec(message)?;
        let mut out = OutgoingMessage::new(topic, payload);
        out.key = options.key;
        out.headers = options.headers;
        if let Some(trace) = trace::current()
            && !out.headers.contains_key(header::TRACE_ID)
        {
            out.headers.insert(header::TRACE_ID.to_owned(), trace);
        }
        self.send_raw(out).await
    }

    /// Publishes a message built by hand and waits for the acknowledgement.
    ///
    /// Once the producer is connected, the message is handed to the broker when this is
    /// called, and the future waits for the acknowledgement (the in-memory broker appends
    /// it at once, as its `publish` does).
    pub fn send_raw(
        &self,
        message: OutgoingMessage,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        // The broker's (boxed) publish future made now, so that this future does not carry
        // the message: with 10 000 publishes in flight, that made Kafka produce through
        // `Producer` about a fifth slower than through the broker alone (BENCHMARKS.md).
        let publishing = match self.inner.broker.get() {
            Some(broker) => Ok(publish_counted(broker, message)),
            None => Err(Box::new(message)),
        };
        async move {
            let (counter, publishing) = match publishing {
                Ok(counted) => counted,
                Err(message) => publish_counted(self.broker().await?, *message),
            };
            publishing.await?;
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// Wraps `data` in the envelope as event `name`, publishes it on `topic` and waits for
    /// the acknowledgement. Returns the event id.
    pub async fn publish_event<T: Serialize + ?Sized>(
        &self,
        name: &str,
        data: &T,
        topic: &str,
    ) -> Result<Uuid, Error> {
        let (id, message) = self.envelope(name, data, topic, None)?;
        self.send_raw(message).await?;
        Ok(id)
    }

    /// Publishes a typed event on its declared topic under its declared name.
    pub async fn publish<E: TypedEvent>(&self, event: &E) -> Result<Uuid, Error> {
        self.publish_event(E::NAME, event, E::TOPIC).await
    }

    /// The enveloped message for `data`; the trace id comes from the current handler or
    /// request when there is one.
    pub fn envelope<T: Serialize + ?Sized>(
        &self,
        name: &str,
        data: &T,
        topic: &str,
        key: Option<String>,
    ) -> Result<(Uuid, OutgoingMessage), Error> {
        let event = Event::new(name, data, self.source()).with_trace_id(trace::current());
        let payload = serde_json::to_vec(&event)?;
        let mut message = OutgoingMessage::new(topic, payload)
            .with_header(header::EVENT_NAME, name)
            .with_header(header::EVENT_ID, event.id.to_string());
        if let Some(trace) = &event.trace_id {
            message
                .headers
                .insert(header::TRACE_ID.to_owned(), trace.clone());
        }
        message.key = key;
        Ok((event.id, message))
    }

    /// Publishes in the background: the caller never waits and never sees an error. A failed
    /// publish is logged and counted in `messaging_events_dropped_total`. Needs a Tokio runtime.
    pub fn fire(&self, message: OutgoingMessage) {
        let producer = self.clone();
        self.inner.pending.fetch_add(1, Ordering::SeqCst);
        let publish = async move {
            let topic = message.topic.clone();
            if let Err(error) = producer.send_raw(message).await {
                metrics().record_dropped();
                tracing::warn!(%topic, %error, "event dropped: publish failed");
            }
            if producer.inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                producer.inner.settled.notify_waiters();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(publish);
            }
            Err(_) => {
                self.inner.pending.fetch_sub(1, Ordering::SeqCst);
                metrics().record_dropped();
                tracing::warn!("event dropped: no Tokio runtime to publish it from");
            }
        }
    }

    /// Background publishes not yet settled.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// Waits (up to `timeout`) for background publishes, then flushes the broker's buffers.
    pub async fn flush_within(&self, timeout: Duration) -> Result<(), Error> {
        let settle = async {
            loop {
                let settled = self.inner.settled.notified();
                if self.pending() == 0 {
                    break;
                }
                settled.await;
            }
        };
        let _ = tokio::time::timeout(timeout, settle).await;
        if let Some(broker) = self.inner.broker.get() {
            broker.flush(timeout).await?;
        }
        Ok(())
    }

    /// [`Producer::flush_within`] with a 30 s limit.
    pub async fn flush(&self) -> Result<(), Error> {
        self.flush_within(Duration::from_secs(30)).await
    }
}

static GLOBAL: RwLock<Option<Producer>> = RwLock::new(None);

/// Hands `message` to `broker`, with the counter that its acknowledgement adds to.
fn publish_counted(
    broker: &Arc<dyn Broker>,
    message: OutgoingMessage,
) -> (&'static AtomicU64, BoxFuture<'_, Result<(), BrokerError>>) {
    let counter =
        metrics().published_counter(broker.name(), message.headers.get(header::EVENT_NAME));
    (counter, broker.publish(message))
}

/// The process-wide producer: the one installed by the runtime or with [`install_producer`],
/// else one on the configured backend, connecting on first use.
pub fn get_producer() -> Producer {
    if let Some(p) = GLOBAL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut slot = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| Producer::lazy(current_config()))
        .clone()
}

/// Makes `producer` the process-wide one (the runtime does this with its own broker).
pub fn install_producer(producer: Producer) {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = Some(producer);
}

pub(crate) fn reset_global_producer() {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Publishes an enveloped event with the process-wide producer; waits for the acknowledgement.
pub async fn publish_event<T: Serialize + ?Sized>(
    name: &str,
    data: &T,
    topic: &str,
) -> Result<Uuid, Error> {
    get_producer().publish_event(name, data, topic).await
}

/// Publishes a typed event with the process-wide producer.
pub async fn publish<E: TypedEvent>(event: &E) -> Result<Uuid, Error> {
    get_producer().publish(event).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Consumer, Subscription};

    /// Acknowledges what is published to `ok`, refuses the rest.
    struct Picky;

    impl Broker for Picky {
        fn name(&self) -> &'static str {
            "picky"
        }

        fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
            Box::pin(async move {
                if message.topic == "ok" {
                    Ok(())
                } else {
                    Err(BrokerError::operation("picky", "publish", "refused"))
                }
            })
        }

        fn subscribe(
            &self,
            _: Subscription,
        ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
            Box::pin(async {
                Err(BrokerError::Unsupported {
                    broker: "picky",
                    operation: "subscribe",
                })
            })
        }
    }

    #[tokio::test]
    async fn a_publish_is_counted_under_its_event_name_once_acknowledged() {
        let producer = Producer::new(Arc::new(Picky), Config::default());
        let named = |topic: &str| {
            OutgoingMessage::new(topic, "{}").with_header(header::EVENT_NAME, "count.me")
        };
        producer.send_raw(named("ok")).await.unwrap();
        producer.send_raw(named("ok")).await.unwrap();
        producer.send_raw(named("no")).await.unwrap_err();
        producer
            .send_raw(OutgoingMessage::new("ok", "{}"))
            .await
            .unwrap();
        assert_eq!(
            metrics().published("picky", "count.me"),
            2,
            "refused: not counted"
        );
        assert_eq!(metrics().published("picky", ""), 1, "no event name");
        let text = metrics().render();
        assert!(
            text.contains("messaging_published_total{backend=\"picky\",event=\"count.me\"} 2"),
            "{text}"
        );
    }
}
