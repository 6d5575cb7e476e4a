//! What a broker provides for request-reply: an inbox where this instance's replies arrive,
//! and the kinds of reply on the wire.
//!
//! A request carries [`header::REPLY_TO`] (the inbox's address) and
//! [`header::CORRELATION_ID`]; every reply carries the same correlation id and a
//! [`header::REPLY_KIND`]. Each broker picks the address that suits it (RabbitMQ's direct
//! reply-to, a shared reply topic on Kafka, a capped stream per instance on Redis) so that no
//! topic, queue or stream is made per request.

use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::{BoxStream, Stream};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{BrokerError, HandlerError};
use crate::handler::BoxFuture;
use crate::message::{Headers, Message, OutgoingMessage, header};

/// This instance's reply inbox, opened once by [`crate::Broker::open_replies`].
#[non_exhaustive]
pub struct ReplyInbox {
    /// What requests carry in [`header::REPLY_TO`]; a responder passes it to
    /// [`crate::Broker::publish_reply`] as the reply's topic.
    pub address: String,
    /// The replies as they arrive, each with its [`header::CORRELATION_ID`] and
    /// [`header::REPLY_KIND`]. Replies to other instances may arrive too where the address is
    /// shared (a Kafka reply topic): the requester keeps those it asked for. Closed when the
    /// inbox is lost (a dropped connection); the requester then opens another.
    pub replies: mpsc::Receiver<Message>,
    /// How requests must go out for their replies to reach this inbox (RabbitMQ's direct
    /// reply-to answers only on the channel that published). `None`: [`crate::Broker::publish`].
    pub publisher: Option<Arc<dyn RequestPublisher>>,
}

impl ReplyInbox {
    /// An inbox at `address` whose replies arrive on `replies`; requests go out with
    /// [`crate::Broker::publish`].
    pub fn new(address: impl Into<String>, replies: mpsc::Receiver<Message>) -> Self {
        Self {
            address: address.into(),
            replies,
            publisher: None,
        }
    }

    /// Requests go out through `publisher` instead.
    pub fn with_publisher(mut self, publisher: Arc<dyn RequestPublisher>) -> Self {
        self.publisher = Some(publisher);
        self
    }
}

impl std::fmt::Debug for ReplyInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyInbox")
            .field("address", &self.address)
            .field("own_publisher", &self.publisher.is_some())
            .finish_non_exhaustive()
    }
}

/// Publishes requests whose replies must come back to one [`ReplyInbox`].
pub trait RequestPublisher: Send + Sync + 'static {
    /// Publishes `request` (with its reply headers already set) and resolves once the broker
    /// has acknowledged it.
    fn publish(&self, request: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// What a reply is, from its [`header::REPLY_KIND`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// The handler's `Ok` value, as JSON.
    Ok,
    /// The handler failed for good: `{"kind": …, "message": …}`.
    Error,
    /// One item of a streamed reply, as JSON.
    Chunk,
    /// A streamed reply is complete; empty body.
    End,
}

impl ReplyKind {
    /// Its header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Chunk => "chunk",
            Self::End => "end",
        }
    }

    /// The kind a header value names.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "ok" => Some(Self::Ok),
            "error" => Some(Self::Error),
            "chunk" => Some(Self::Chunk),
            "end" => Some(Self::End),
            _ => None,
        }
    }

    /// The kind of `message`'s reply; a reply without the header (a foreign AMQP RPC
    /// server's) is a plain `Ok`.
    pub fn of(message: &Message) -> Option<Self> {
        match message.headers.get(header::REPLY_KIND) {
            Some(value) => Self::parse(value),
            None => Some(Self::Ok),
        }
    }
}

/// On a chunk: its place in the stream, from 0, so that the requester drops chunks sent
/// again when the responder's attempt is retried.
pub const CHUNK_SEQUENCE: &str = "x-reply-seq";

/// Where the replies to `request` go: its [`header::REPLY_TO`] and
/// [`header::CORRELATION_ID`]. `None` when it asks for no reply.
pub fn return_address(request: &Message) -> Option<ReturnAddress> {
    let to = request.header(header::REPLY_TO)?;
    let correlation = request
        .headers
        .get_bytes(header::CORRELATION_ID)
        .unwrap_or_default();
    Some(ReturnAddress {
        to: to.to_owned(),
        correlation: correlation.to_vec(),
        trace: request.header(header::TRACE_ID).map(str::to_owned),
        trace_context: crate::trace::context_of(request),
    })
}

/// Where one request's replies go.
#[derive(Clone, Debug)]
pub struct ReturnAddress {
    /// The requester's inbox address.
    pub to: String,
    /// The request's correlation id, sent back with every reply.
    pub correlation: Vec<u8>,
    /// The request's trace id, kept on its replies.
    pub trace: Option<String>,
    /// The request's W3C trace context (feature `otel`), for replies sent outside a span
    /// that has one (the error reply of a dead-lettered request).
    trace_context: Headers,
}

impl ReturnAddress {
    /// A reply of `kind` with this body, for [`crate::Broker::publish_reply`]. Keyed by the
    /// correlation id, so that the chunks of one reply keep their order (one Kafka
    /// partition).
    pub fn reply(&self, kind: ReplyKind, body: Vec<u8>) -> OutgoingMessage {
        let mut reply = OutgoingMessage::new(self.to.clone(), body);
        reply.key = Some(crate::Key::from(self.correlation.clone()));
        reply
            .headers
            .insert(header::CORRELATION_ID, self.correlation.clone());
        reply.headers.insert(header::REPLY_KIND, kind.as_str());
        if let Some(trace) = &self.trace {
            reply.headers.insert(header::TRACE_ID, trace.as_str());
        }
        crate::trace::inject_reply_context(&self.trace_context, &mut reply.headers);
        reply
    }

    /// The error reply of a request whose handler failed for good.
    pub fn error_reply(&self, kind: &str, message: &str) -> OutgoingMessage {
        let body = serde_json::json!({ "kind": kind, "message": message });
        self.reply(ReplyKind::Error, body.to_string().into_bytes())
    }
}

/// What a handler returns to reply with a stream: each item goes to the requester as a
/// chunk as soon as it is ready, then an end marker.
/// [`Producer::request_stream`](crate::Producer::request_stream) yields them.
///
/// ```
/// use messaging_core::{HandlerError, message_handler, reply::ReplyStream};
///
/// #[message_handler(topic = "guardian.stream")]
/// async fn advise(question: String) -> Result<ReplyStream<String>, HandlerError> {
///     let words: Vec<String> = question.split(' ').map(str::to_owned).collect();
///     Ok(ReplyStream::new(futures::stream::iter(words)))
/// }
/// ```
pub struct ReplyStream<T> {
    items: BoxStream<'static, Result<T, HandlerError>>,
}

impl<T: Send + 'static> ReplyStream<T> {
    /// The items of `stream`, each sent as it comes.
    pub fn new(stream: impl Stream<Item = T> + Send + 'static) -> Self {
        Self {
            items: stream.map(Ok).boxed(),
        }
    }

    /// The items of a stream that may fail: a failure fails the handler's attempt, which is
    /// retried (the requester drops the chunks it already has) and, once the attempts are
    /// used up, answered with an error reply.
    pub fn try_new<E: Into<HandlerError>>(
        stream: impl Stream<Item = Result<T, E>> + Send + 'static,
    ) -> Self {
        Self {
            items: stream.map(|item| item.map_err(Into::into)).boxed(),
        }
    }
}

impl<T> std::fmt::Debug for ReplyStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStream").finish_non_exhaustive()
    }
}

/// Replies to one request from inside a handler's attempt. Handlers made by the macros
/// reply with their `Ok` value on their own; a handler built in code
/// ([`HandlerSpec::new`](crate::HandlerSpec::new)) replies through this.
pub struct Responder {
    producer: crate::Producer,
    address: ReturnAddress,
}

impl Responder {
    /// The responder of `invocation`'s message, when it asks for a reply.
    pub fn of(invocation: &crate::Invocation) -> Option<Self> {
        let address = return_address(&invocation.message)?;
        Some(Self {
            producer: invocation.context.producer().clone(),
            address,
        })
    }

    async fn send(&self, reply: OutgoingMessage) -> Result<(), HandlerError> {
        let broker = self
            .producer
            .broker()
            .await
            .map_err(HandlerError::retryable)?;
        broker
            .publish_reply(reply)
            .await
            .map_err(HandlerError::retryable)
    }

    /// Replies with `value` as JSON.
    pub async fn value<T: Serialize>(&self, value: T) -> Result<(), HandlerError> {
        let body = serde_json::to_vec(&value).map_err(HandlerError::permanent)?;
        self.ok(body).await
    }

    /// Replies with a JSON body.
    pub async fn ok(&self, body: Vec<u8>) -> Result<(), HandlerError> {
        self.send(self.address.reply(ReplyKind::Ok, body)).await
    }

    /// Replies with each item of `stream` as a chunk, then the end marker.
    pub async fn stream<T: Serialize>(&self, stream: ReplyStream<T>) -> Result<(), HandlerError> {
        let mut items = stream.items;
        let mut seq = 0u64;
        while let Some(item) = items.next().await {
            let body = serde_json::to_vec(&item?).map_err(HandlerError::permanent)?;
            let mut chunk = self.address.reply(ReplyKind::Chunk, body);
            chunk.headers.insert(CHUNK_SEQUENCE, seq.to_string());
            self.send(chunk).await?;
            seq += 1;
        }
        self.send(self.address.reply(ReplyKind::End, Vec::new()))
            .await
    }
}

/// Picks how a handler's result is sent back, by its type (autoref specialization, as in
/// `__private::event_name`): a [`ReplyStream`] as chunks, a serializable value as JSON,
/// anything else (`()`) as `null`. A failed attempt sends nothing: the dispatcher answers
/// with an error reply once the attempts are used up.
#[doc(hidden)]
pub mod by_type {
    use std::cell::Cell;

    use super::{ReplyStream, Responder};
    use crate::error::HandlerError;
    use crate::handler::{BoxFuture, IntoHandlerResult};

    /// A handler's result, taken by the method that sends it.
    pub struct Output<R>(Cell<Option<R>>);

    impl<R> Output<R> {
        /// Wraps `result`.
        pub fn new(result: R) -> Self {
            Self(Cell::new(Some(result)))
        }

        fn take(&self) -> R {
            self.0
                .take()
                .unwrap_or_else(|| unreachable!("a handler's result is sent once"))
        }
    }

    type Replying = BoxFuture<'static, Result<(), HandlerError>>;

    /// `Result<ReplyStream<T>, E>`.
    pub trait ReplyStreamed {
        /// Sends the reply.
        fn __messaging_reply(&self, to: Responder) -> Replying;
    }

    impl<T, E> ReplyStreamed for &&Output<Result<ReplyStream<T>, E>>
    where
        T: serde::Serialize + Send + 'static,
        E: Into<HandlerError>,
    {
        fn __messaging_reply(&self, to: Responder) -> Replying {
            let result = self.take().map_err(Into::into);
            Box::pin(async move { to.stream(result?).await })
        }
    }

    /// `Result<T, E>` with `T: Serialize`.
    pub trait ReplySerialized {
        /// Sends the reply.
        fn __messaging_reply(&self, to: Responder) -> Replying;
    }

    impl<T, E> ReplySerialized for &Output<Result<T, E>>
    where
        T: serde::Serialize + Send + 'static,
        E: Into<HandlerError>,
    {
        fn __messaging_reply(&self, to: Responder) -> Replying {
            let body = self
                .take()
                .map_err(Into::into)
                .and_then(|value| serde_json::to_vec(&value).map_err(HandlerError::permanent));
            Box::pin(async move { to.ok(body?).await })
        }
    }

    /// Anything else a handler may return.
    pub trait ReplyNull {
        /// Sends the reply.
        fn __messaging_reply(&self, to: Responder) -> Replying;
    }

    impl<R: IntoHandlerResult> ReplyNull for Output<R> {
        fn __messaging_reply(&self, to: Responder) -> Replying {
            let result = self.take().into_handler_result();
            Box::pin(async move {
                result?;
                to.ok(b"null".to_vec()).await
            })
        }
    }
}
