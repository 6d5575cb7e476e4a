//! Publishing on one confirm-mode channel of the broker's own connection. Each `publish`
//! awaits its publisher confirm; many may be in flight at once on the channel. Publishes are
//! mandatory: one that no queue is bound to is returned by the broker and fails with
//! [`RabbitError::Unroutable`] instead of being confirmed and lost. A lost
//! connection is reopened on the next publish (paced by the retry gate), and the exchange
//! and kept-topic queues are declared again on it. Replies go out on the same channel, to
//! the default exchange.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::message::BasicReturnMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation, Connection};
use messaging_core::OutgoingMessage;

use crate::connection::{self, RetryGate};
use crate::error::RabbitError;
use crate::headers;
use crate::options::RabbitOptions;
use crate::topology;

/// The publishing side of a broker, shared by its clones.
pub(crate) struct Publisher {
    options: Arc<RabbitOptions>,
    exchange: ShortString,
    /// Shared by reference: cloning a lapin `Channel` per publish costs more.
    session: Mutex<Option<Arc<Session>>>,
    /// Held while (re)connecting so concurrent publishes wait for one attempt.
    gate: tokio::sync::Mutex<RetryGate>,
    /// Topics declared with `declare_topics`, declared again after a reconnect.
    kept: Mutex<BTreeSet<String>>,
}

struct Session {
    /// Also opens side channels (`browse`).
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    /// Connects once (no retry): a broker that cannot be reached fails here.
    pub(crate) async fn connect(options: Arc<RabbitOptions>) -> Result<Self, RabbitError> {
        let publisher = Self {
            exchange: topology::exchange(&options.exchange)?,
            options,
            session: Mutex::new(None),
            gate: tokio::sync::Mutex::new(RetryGate::default()),
            kept: Mutex::new(BTreeSet::new()),
        };
        publisher.current().await?;
        Ok(publisher)
    }

    fn session(&self) -> MutexGuard<'_, Option<Arc<Session>>> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connected(&self) -> Option<Arc<Session>> {
        self.session()
            .as_ref()
            .filter(|s| s.channel.status().connected())
            .map(Arc::clone)
    }

    /// A connected session, its channel in confirm mode, reconnecting when the last one died.
    async fn current(&self) -> Result<Arc<Session>, RabbitError> {
        if let Some(session) = self.connected() {
            return Ok(session);
        }
        let mut gate = self.gate.lock().await;
        if let Some(session) = self.connected() {
            return Ok(session);
        }
        if !gate.wait().is_zero() {
            return Err(gate.waiting());
        }
        let reconnect = self.session().take().is_some();
        match self.open().await {
            Ok(session) => {
                gate.succeeded();
                if reconnect {
                    tracing::info!(exchange = %self.exchange, "publisher reconnected");
                }
                let session = Arc::new(session);
                *self.session() = Some(Arc::clone(&session));
                Ok(session)
            }
            Err(error) => {
                gate.failed(&self.options, &error);
                // The caller reports it (the connect loop, or the publish that needed it).
                tracing::debug!(%error, "publisher connection failed");
                Err(error)
            }
        }
    }

    async fn open(&self) -> Result<Session, RabbitError> {
        let connection = connection::open(&self.options, "publisher").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare_exchange(&channel, &self.exchange).await?;
        let kept: Vec<String> = self.kept().iter().cloned().collect();
        for topic in &kept {
            self.declare_kept(&channel, topic).await?;
        }
        Ok(Session {
            connection,
            channel,
        })
    }

    fn kept(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn declare_kept(&self, channel: &Channel, topic: &str) -> Result<(), RabbitError> {
        let key = topology::routing_key(topic)?;
        let queue = topology::topic_queue(&self.options.exchange, topic)?;
        topology::declare_bound_queue(
            channel,
            &self.exchange,
            &queue,
            &[key],
            self.options.queue_expires,
        )
        .await
    }

    /// Declares a kept queue for each topic, and remembers them for reconnects.
    pub(crate) async fn declare_topics(&self, topics: &[String]) -> Result<(), RabbitError> {
        for topic in topics {
            topology::routing_key(topic)?;
        }
        let session = self.current().await?;
        for topic in topics {
            self.declare_kept(&session.channel, topic).await?;
            self.kept().insert(topic.clone());
        }
        Ok(())
    }

    /// Publishes persistently and waits for the confirm. A publish that failed because the
    /// connection was lost is tried once more on a new connection (at least once: it may
    /// have been stored before the loss).
    pub(crate) async fn publish(&self, message: &OutgoingMessage) -> Result<(), RabbitError> {
        let routing_key = topology::routing_key(&message.topic)?;
        // Mandatory: a message no queue is bound to comes back (`basic.return`, then the
        // confirm) rather than being dropped by the exchange.
        match self
            .send(&self.exchange, routing_key, true, message)
            .await?
        {
            Some(returned) => Err(unroutable(&self.options.exchange, message, &returned)),
            None => Ok(()),
        }
    }

    /// Publishes a reply to the address its request carried in `reply_to`: on the default
    /// exchange, whose routing key names a queue, or a requester's direct reply-to address.
    ///
    /// A requester that is gone is not an error. Direct reply-to replies are at most once
    /// (RabbitMQ's documentation): a reply whose requester's channel has closed is dropped
    /// by the broker and confirmed all the same, and the requester resends after its
    /// timeout. An error here would only make the responder retry a reply nobody can
    /// receive, then dead-letter a request whose handler succeeded. The publish is not
    /// mandatory: RabbitMQ before 4.2 never counts a direct reply-to address as routed, so
    /// it returns every mandatory reply (`312 NO_ROUTE`, seen on 3.10) even one it has
    /// delivered, which would hide a gone requester among live ones. A classic reply queue
    /// that was deleted drops the reply the same way.
    pub(crate) async fn publish_reply(&self, reply: &OutgoingMessage) -> Result<(), RabbitError> {
        let address = reply_address(&reply.topic)?;
        let returned = self
            .send(&ShortString::default(), address, false, reply)
            .await?;
        // Only a mandatory publish is returned; kept for a broker that returns anyway.
        if let Some(returned) = returned {
            tracing::debug!(
                address = %reply.topic,
                code = returned.reply_code,
                reason = %returned.reply_text,
                "reply returned by the broker: its requester is gone; dropped"
            );
        }
        Ok(())
    }

    /// Publishes `message` with `routing_key` on `exchange` and waits for the confirm; the
    /// message the broker returned, if it did.
    async fn send(
        &self,
        exchange: &ShortString,
        routing_key: ShortString,
        mandatory: bool,
        message: &OutgoingMessage,
    ) -> Result<Option<BasicReturnMessage>, RabbitError> {
        let mut retried = false;
        loop {
            // Built per attempt rather than cloned: the retry is the rare case.
            let properties = headers::properties(message)?;
            let session = self.current().await?;
            let channel = &session.channel;
            let options = BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            };
            let sent = async {
                let confirm = channel
                    .basic_publish(
                        exchange.clone(),
                        routing_key.clone(),
                        options,
                        &message.payload,
                        properties,
                    )
                    .await?;
                confirmed(confirm.await?)
            };
            match sent.await {
                Err(error)
                    if !retried && !channel.status().connected() && error.is_connection() =>
                {
                    tracing::debug!(%error, "publish lost with its connection; retrying on a new one");
                    retried = true;
                }
                result => return result,
            }
        }
    }

    /// A fresh channel on the publishing connection (for `browse`).
    pub(crate) async fn side_channel(&self) -> Result<Channel, RabbitError> {
        let session = self.current().await?;
        Ok(session.connection.create_channel().await?)
    }
}

/// The outcome of a publisher confirm: the returned message if the broker returned it.
pub(crate) fn confirmed(
    confirmation: Confirmation,
) -> Result<Option<BasicReturnMessage>, RabbitError> {
    match confirmation {
        Confirmation::Nack(_) => Err(RabbitError::Nacked),
        Confirmation::Ack(returned) => Ok(returned),
        Confirmation::NotRequested => Ok(None),
    }
}

/// The error for a mandatory `message` the broker returned from `exchange`.
pub(crate) fn unroutable(
    exchange: &str,
    message: &OutgoingMessage,
    returned: &BasicReturnMessage,
) -> RabbitError {
    RabbitError::Unroutable {
        topic: message.topic.clone(),
        exchange: exchange.to_owned(),
        reason: format!("{} {}", returned.reply_code, returned.reply_text),
    }
}

/// A reply's address as a routing key of the default exchange: any queue name (wildcards
/// mean nothing there), not empty.
fn reply_address(address: &str) -> Result<ShortString, RabbitError> {
    let invalid = |reason| RabbitError::InvalidName {
        what: "reply address",
        name: address.to_owned(),
        reason,
    };
    if address.is_empty() {
        return Err(invalid(
            "a reply needs the address its request carried in `x-reply-to`",
        ));
    }
    ShortString::try_new(address).map_err(|_| invalid("longer than 255 bytes"))
}
