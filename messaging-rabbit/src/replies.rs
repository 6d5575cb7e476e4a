//! Request-reply on RabbitMQ with direct reply-to: the inbox is the pseudo-queue
//! `amq.rabbitmq.reply-to`, consumed without acknowledgements on a channel of the publishing
//! connection. No queue is declared, so nothing is left behind by an instance that goes away.
//!
//! RabbitMQ delivers a reply only to the channel that published the request, so requests go
//! out on the inbox's own channel (in confirm mode, to the topic exchange). Requests and
//! replies carry the AMQP `reply_to` and `correlation_id` properties besides the headers
//! (see `headers`), so an AMQP RPC client or server in another language can take part.

use std::sync::Arc;

use futures::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use messaging_core::reply::{ReplyInbox, RequestPublisher};
use messaging_core::{BoxFuture, BrokerError, Message, OutgoingMessage, TopicName, TopicNames};
use tokio::sync::mpsc;

use crate::error::RabbitError;
use crate::headers;
use crate::publisher::{self, Publisher};
use crate::topology;

/// The pseudo-queue a requester consumes and names in `reply_to`; RabbitMQ rewrites it in
/// each request into the address of the requester's channel.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Replies held between the channel and the requester. Direct reply-to has no flow control
/// (no acknowledgements): when the requester falls behind, lapin buffers the rest.
const BUFFERED_REPLIES: usize = 256;

/// Opens an inbox on a new channel of `publisher`'s connection.
pub(crate) async fn open(publisher: &Publisher, exchange: &str) -> Result<ReplyInbox, RabbitError> {
    let exchange_key = topology::exchange(exchange)?;
    let channel = publisher.side_channel().await?;
    let opened = async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Direct reply-to must be consumed without acknowledgements: there is no queue to
        // return a reply to.
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        channel
            .basic_consume(
                ShortString::from(DIRECT_REPLY_TO),
                ShortString::default(),
                no_ack,
                FieldTable::default(),
            )
            .await
    };
    let replies = match opened.await {
        Ok(replies) => replies,
        Err(error) => {
            let _ = channel.close(200, "reply inbox not opened".into()).await;
            return Err(error.into());
        }
    };
    let (sender, receiver) = mpsc::channel(BUFFERED_REPLIES);
    tokio::spawn(forward(replies, sender, channel.clone()));
    let requests = RequestChannel {
        channel,
        exchange: exchange_key,
        exchange_name: exchange.to_owned(),
    };
    Ok(ReplyInbox::new(DIRECT_REPLY_TO, receiver).with_publisher(Arc::new(requests)))
}

/// Hands each reply to the requester until the channel dies (the sender is dropped, which
/// tells the requester to open another inbox) or the requester drops the inbox (the
/// channel is closed, so RabbitMQ drops later replies to it).
async fn forward(mut replies: Consumer, sender: mpsc::Sender<Message>, channel: Channel) {
    let inbox = TopicName::from(DIRECT_REPLY_TO);
    let names = TopicNames::new([DIRECT_REPLY_TO]);
    loop {
        let delivery = tokio::select! {
            next = replies.next() => next,
            () = sender.closed() => break,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::debug!(%error, "reply inbox lost; the requester opens another");
                return;
            }
            None => {
                tracing::debug!("reply inbox closed; the requester opens another");
                return;
            }
        };
        // Consumed without acknowledgements: the acker has nothing to do.
        let (mut reply, _) = headers::to_message(delivery, &names);
        // Named after the inbox, not the channel's own address in the routing key.
        reply.topic = inbox.clone();
        if sender.send(reply).await.is_err() {
            break;
        }
    }
    if let Err(error) = channel.close(200, "reply inbox dropped".into()).await {
        tracing::debug!(%error, "closing the reply channel failed");
    }
}

/// Publishes requests on the inbox's channel, whose direct reply-to address RabbitMQ puts
/// in their `reply_to`.
struct RequestChannel {
    channel: Channel,
    exchange: ShortString,
    exchange_name: String,
}

impl RequestChannel {
    async fn send(&self, request: &OutgoingMessage) -> Result<(), RabbitError> {
        let routing_key = topology::routing_key(&request.topic)?;
        let properties = headers::properties(request)?;
        // Mandatory, as `publish`: a request nothing consumes fails now rather than at the
        // requester's timeout.
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.clone(),
                routing_key,
                mandatory,
                &request.payload,
                properties,
            )
            .await?;
        match publisher::confirmed(confirm.await?)? {
            Some(returned) => Err(publisher::unroutable(
                &self.exchange_name,
                request,
                &returned,
            )),
            None => Ok(()),
        }
    }
}

impl RequestPublisher for RequestChannel {
    fn publish(&self, request: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        // Not retried on another channel: its replies could not reach this inbox. A lost
        // channel also ends the inbox, and the requester opens another.
        Box::pin(async move {
            self.send(&request)
                .await
                .map_err(|e| e.into_broker("request"))
        })
    }
}
