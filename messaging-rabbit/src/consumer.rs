//! A group member: its own connection and channel, `basic.qos` prefetch, one `basic.consume`
//! on the group's queue, manual acknowledgements. When the channel dies, `next_batch` reconnects (paced by the retry
//! gate), declares the topology again and consumes anew; what was delivered and not
//! acknowledged is redelivered by RabbitMQ.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use messaging_core::{
    Acker, BoxFuture, BrokerError, Consumer, Message, Position, Subscription, TopicNames,
};

use crate::connection::{self, RetryGate};
use crate::error::RabbitError;
use crate::headers;
use crate::options::RabbitOptions;
use crate::topology;

/// What `subscribe` checked once: the group's queue and the routing keys bound to it.
pub(crate) struct Plan {
    pub options: Arc<RabbitOptions>,
    pub subscription: Subscription,
    pub exchange: ShortString,
    pub queue: ShortString,
    pub routing_keys: Vec<ShortString>,
}

impl Plan {
    pub(crate) fn new(
        options: Arc<RabbitOptions>,
        subscription: Subscription,
    ) -> Result<Self, RabbitError> {
        let routing_keys: Vec<ShortString> = subscription
            .topics
            .iter()
            .map(|t| topology::routing_key(t))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            exchange: topology::exchange(&options.exchange)?,
            queue: topology::group_queue(&options.exchange, &subscription.group)?,
            routing_keys,
            options,
            subscription,
        })
    }

    /// Connects, declares the exchange and the queue with its bindings, sets the prefetch
    /// and starts consuming.
    async fn open(&self) -> Result<Session, RabbitError> {
        let role = format!("consumer {}", self.subscription.group);
        let connection = connection::open(&self.options, &role).await?;
        let channel = connection.create_channel().await?;
        let prefetch = u16::try_from(self.subscription.prefetch.max(1)).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        topology::declare_exchange(&channel, &self.exchange).await?;
        topology::declare_bound_queue(
            &channel,
            &self.exchange,
            &self.queue,
            &self.routing_keys,
            self.options.queue_expires,
        )
        .await?;
        let stream = channel
            .basic_consume(
                self.queue.clone(),
                ShortString::default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Session {
            connection,
            _channel: channel,
            stream,
        })
    }
}

struct Session {
    connection: Connection,
    /// Kept open for the deliveries' acknowledgements.
    _channel: Channel,
    /// Deliveries of the group's queue.
    stream: lapin::Consumer,
}

/// Deliveries handed out and not yet acknowledged, by the receipt each message was handed
/// out with ([`Message::receipt`]), never used twice by one consumer: delivery tags start
/// again on every channel, so a message of a dead channel must not acknowledge the new
/// channel's delivery of the same tag.
/// Also the acknowledgements sent and not yet written out, so `close` can wait for them.
#[derive(Default)]
pub(crate) struct Pending {
    by_receipt: Mutex<HashMap<u64, Held>>,
    last_receipt: AtomicU64,
    sending: Mutex<FuturesUnordered<BoxFuture<'static, lapin::Result<bool>>>>,
}

/// A delivery handed out: its tag on the current channel, and what acknowledges it.
struct Held {
    tag: u64,
    acker: lapin::Acker,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.by_receipt.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many deliveries are handed out and not acknowledged (for `crate::lag`).
    pub(crate) fn held(&self) -> usize {
        self.lock().len()
    }

    /// A receipt no message of this consumer had before.
    fn next_receipt(&self) -> u64 {
        self.last_receipt.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn sending(&self) -> MutexGuard<'_, FuturesUnordered<BoxFuture<'static, lapin::Result<bool>>>> {
        self.sending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the acknowledgement to lapin's I/O loop without waiting for it to be written:
    /// AMQP acks get no reply, and waiting costs two thread hops per message. If the
    /// connection dies before it is written, RabbitMQ redelivers the message.
    fn send_ack(&self, acker: lapin::Acker) {
        let mut sending = self.sending();
        sending.push(Box::pin(async move {
            acker.ack(BasicAckOptions::default()).await
        }));
        // The first poll of the new one sends it; finished ones are reaped.
        while let Some(Some(result)) = sending.next().now_or_never() {
            if let Err(error) = result {
                tracing::debug!(%error, "an acknowledgement was not written; the broker redelivers");
            }
        }
    }

    /// Waits until every acknowledgement sent so far is written out.
    async fn flush(&self) {
        let mut sending = std::mem::take(&mut *self.sending());
        while let Some(result) = sending.next().await {
            if let Err(error) = result {
                tracing::debug!(%error, "an acknowledgement was not written; the broker redelivers");
            }
        }
    }
}

/// A member of one group.
pub(crate) struct RabbitConsumer {
    plan: Plan,
    /// The group's topics' names, shared by the messages received.
    names: TopicNames,
    session: Option<Session>,
    gate: RetryGate,
    pending: Arc<Pending>,
}

impl RabbitConsumer {
    /// Joins the group: the queue exists and is bound when this returns.
    pub(crate) async fn start(plan: Plan) -> Result<Self, RabbitError> {
        let session = plan.open().await?;
        Ok(Self {
            names: TopicNames::new(&plan.subscription.topics),
            plan,
            session: Some(session),
            gate: RetryGate::default(),
            pending: Arc::default(),
        })
    }

    /// What this consumer holds, for `crate::lag`.
    pub(crate) fn pending(&self) -> &Arc<Pending> {
        &self.pending
    }

    /// The group's queue.
    pub(crate) fn queue(&self) -> &ShortString {
        &self.plan.queue
    }

    /// Reconnects until a session is open, or returns an error when a cooldown starts.
    /// Cancel-safe: dropped half-way, the half-open connection is dropped (closed) too.
    async fn ensure_session(&mut self) -> Result<&mut Session, RabbitError> {
        while self.session.is_none() {
            let wait = self.gate.wait();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match self.plan.open().await {
                Ok(session) => {
                    self.gate.succeeded();
                    // Tags of the dead channel mean nothing on the new one.
                    self.pending.lock().clear();
                    tracing::info!(group = %self.plan.subscription.group, "consumer reconnected");
                    self.session = Some(session);
                }
                Err(error) => {
                    let cooldown = self.gate.failed(&self.plan.options, &error);
                    tracing::warn!(group = %self.plan.subscription.group, %error, cooldown, "consumer reconnection failed");
                    if cooldown {
                        return Err(error);
                    }
                }
            }
        }
        self.session.as_mut().ok_or(RabbitError::ChannelClosed)
    }

    fn hand_out(&self, delivery: lapin::message::Delivery) -> Arc<Message> {
        let tag = delivery.delivery_tag;
        let (message, acker) = headers::to_message(delivery, &self.names);
        let receipt = self.pending.next_receipt();
        self.pending.lock().insert(receipt, Held { tag, acker });
        Arc::new(message.with_receipt(receipt))
    }

    async fn batch(&mut self, max: usize) -> Result<Vec<Arc<Message>>, RabbitError> {
        let max = max.max(1);
        let first = self.ensure_session().await?.stream.next().await;
        let first = match first {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                self.session = None;
                return Err(error.into());
            }
            None => {
                // Cancelled by the broker (queue deleted) or the channel closed.
                self.session = None;
                return Err(RabbitError::ChannelClosed);
            }
        };
        // From here on nothing awaits: a dropped future cannot lose a delivery.
        let mut batch = vec![self.hand_out(first)];
        while batch.len() < max {
            let Some(session) = self.session.as_mut() else {
                break;
            };
            match session.stream.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(self.hand_out(delivery)),
                Some(Some(Err(_)) | None) => {
                    // Hand out what arrived; the next call reconnects.
                    self.session = None;
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }
}

impl Consumer for RabbitConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(async move { self.batch(max).await.map_err(|e| e.into_broker("consume")) })
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::new(RabbitAcker {
            pending: Arc::clone(&self.pending),
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(session) = self.session.take() else {
                return Ok(());
            };
            // Acknowledgements go out before the close.
            self.pending.flush().await;
            // Closing the connection hands unacknowledged deliveries back to the queue.
            match session
                .connection
                .close(200, "consumer closed".into())
                .await
            {
                Ok(()) => Ok(()),
                Err(error) if !session.connection.status().connected() => {
                    tracing::debug!(%error, "connection already closed");
                    Ok(())
                }
                Err(error) => Err(RabbitError::from(error).into_broker("close")),
            }
        })
    }
}

/// Acknowledges deliveries of one consumer, from any task.
struct RabbitAcker {
    pending: Arc<Pending>,
}

impl RabbitAcker {
    fn ack_delivery(&self, message: &Message) -> Result<(), RabbitError> {
        let Position::DeliveryTag(tag) = message.position else {
            return Err(RabbitError::NotADelivery {
                position: message.position.to_string(),
            });
        };
        let acker = {
            let mut pending = self.pending.lock();
            match pending.get(&message.receipt) {
                Some(held) if held.tag == tag => {
                    pending.remove(&message.receipt).map(|held| held.acker)
                }
                _ => None,
            }
        };
        let acker = acker.ok_or(RabbitError::StaleDelivery { tag })?;
        if acker.poisoned() {
            // Its channel closed: the broker redelivers the message.
            return Err(RabbitError::ChannelClosed);
        }
        self.pending.send_ack(acker);
        Ok(())
    }
}

impl Acker for RabbitAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        let result = self.ack_delivery(message).map_err(|e| e.into_broker("ack"));
        Box::pin(std::future::ready(result))
    }

    // `basic.ack` is queued for the channel's task: nothing to wait for here.
    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        messaging_core::broker::ack_each(messages, |m| {
            self.ack_delivery(m).map_err(|e| e.into_broker("ack"))
        })
    }
}
