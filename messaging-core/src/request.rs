//! Request-reply, the requester's side: [`Producer::request`] and
//! [`Producer::request_stream`].
//!
//! A producer opens one reply inbox on its broker at its first request
//! ([`crate::Broker::open_replies`]) and keeps it; each request registers its correlation id
//! (`<inbox id>:<n>`) and waits for the replies that carry it. Replies to another instance
//! sharing the inbox's address (a Kafka reply topic) are passed over; one of ours that
//! arrives after its requester stopped waiting is dropped and counted
//! (`messaging_late_replies_total`).

use std::collections::HashMap;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::Utc;
use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::handler::BoxFuture;
use crate::message::{Message, OutgoingMessage, header};
use crate::metrics::metrics;
use crate::producer::{Producer, SendOptions};
use crate::reply::{CHUNK_SEQUENCE, ReplyInbox, ReplyKind, RequestPublisher};
use crate::trace;

/// How long a request waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply within the timeout (nobody handles the topic, or the responder is slow).
    #[error("no reply to the request on `{topic}` within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The topic the request went to.
        topic: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The responder's handler failed for good and said why.
    #[error("the responder failed ({kind}): {message}")]
    Remote {
        /// The failure's kind (`handler`, `schema`, `timeout` …).
        kind: String,
        /// Its message.
        message: String,
    },
    /// The reply arrived but is not the type asked for.
    #[error("the reply does not decode as `{expected}`: {source}")]
    Decode {
        /// The type asked for.
        expected: &'static str,
        /// Why not.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be encoded or published, or the reply inbox was lost.
    #[error(transparent)]
    Broker(#[from] Error),
}

impl RequestError {
    /// Whether no reply came in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

/// The reply inbox of one producer (and its clones).
#[derive(Default)]
pub(crate) struct Requests {
    inbox: tokio::sync::Mutex<Option<Arc<Inbox>>>,
}

/// An open inbox and the requests waiting on it.
struct Inbox {
    address: String,
    /// `<inbox id>:`, the start of every correlation id of ours.
    prefix: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>,
    publisher: Option<Arc<dyn RequestPublisher>>,
    open: AtomicBool,
}

impl Inbox {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Message>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands each reply to its request until the broker closes the inbox.
    async fn route(inbox: Weak<Self>, mut replies: mpsc::Receiver<Message>) {
        while let Some(reply) = replies.recv().await {
            let Some(inbox) = inbox.upgrade() else { return };
            let Some(n) = reply
                .header(header::CORRELATION_ID)
                .and_then(|id| id.strip_prefix(inbox.prefix.as_str()))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                // Another instance's (the address is shared) or not a reply at all.
                continue;
            };
            let delivered = inbox
                .waiting()
                .get(&n)
                .is_some_and(|waiter| waiter.send(reply).is_ok());
            if !delivered {
                metrics().record_late_reply();
                tracing::debug!(correlation = n, "late reply dropped");
            }
        }
        if let Some(inbox) = inbox.upgrade() {
            tracing::warn!(address = %inbox.address, "reply inbox closed; the next request opens another");
            inbox.open.store(false, Ordering::Release);
            // Wakes every waiting request with "inbox lost".
            inbox.waiting().clear();
        }
    }
}

/// One request's registration: removed when it is dropped, so that a reply arriving
/// afterwards is counted as late.
struct Waiting {
    inbox: Arc<Inbox>,
    n: u64,
    replies: mpsc::UnboundedReceiver<Message>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.inbox.waiting().remove(&self.n);
    }
}

impl Requests {
    async fn inbox(&self, producer: &Producer) -> Result<Arc<Inbox>, Error> {
        let mut slot = self.inbox.lock().await;
        if let Some(inbox) = slot.as_ref().filter(|i| i.open.load(Ordering::Acquire)) {
            return Ok(Arc::clone(inbox));
        }
        let ReplyInbox {
            address,
            replies,
            publisher,
            ..
        } = producer.broker().await?.open_replies().await?;
        let inbox = Arc::new(Inbox {
            address,
            prefix: format!("{}:", uuid::Uuid::now_v7().simple()),
            next: AtomicU64::new(0),
            waiting: Mutex::default(),
            publisher,
            open: AtomicBool::new(true),
        });
        tokio::spawn(Inbox::route(Arc::downgrade(&inbox), replies));
        *slot = Some(Arc::clone(&inbox));
        Ok(inbox)
    }
}

/// A request being built: `.timeout(..)` and `.options(..)` are optional; `.await` sends it
/// and waits for the reply. Made by [`Producer::request`].
#[must_use = "a request does nothing until it is awaited"]
pub struct Request<'a, Resp> {
    producer: &'a Producer,
    topic: String,
    payload: Result<Vec<u8>, serde_json::Error>,
    timeout: Duration,
    options: SendOptions,
    reply: PhantomData<fn() -> Resp>,
}

impl<Resp> Request<'_, Resp> {
    /// How long to wait for the reply (default [`DEFAULT_TIMEOUT`]); the responder is told
    /// the deadline and does not start on a request that has passed it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A key (which keeps order with other messages of the key) and headers.
    pub fn options(mut self, options: SendOptions) -> Self {
        self.options = options;
        self
    }

    /// Publishes the request; returns its registration, with replies to come.
    async fn send(self) -> Result<(Waiting, String, Duration), RequestError> {
        let payload = self.payload.map_err(Error::from)?;
        let producer = self.producer;
        let inbox = producer.requests().inbox(producer).await?;
        let n = inbox.next.fetch_add(1, Ordering::Relaxed);
        let (sender, replies) = mpsc::unbounded_channel();
        inbox.waiting().insert(n, sender);
        let waiting = Waiting {
            inbox: Arc::clone(&inbox),
            n,
            replies,
        };

        let mut request = OutgoingMessage::new(self.topic.clone(), payload);
        request.key = self.options.key;
        request.headers = self.options.headers;
        let deadline = Utc::now() + self.timeout;
        let headers = &mut request.headers;
        headers.insert(header::REPLY_TO, inbox.address.as_str());
        headers.insert(header::CORRELATION_ID, format!("{}{n}", inbox.prefix));
        headers.insert(
            header::DEADLINE,
            deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        if let Some(trace) = trace::current()
            && !headers.contains_key(header::TRACE_ID)
        {
            headers.insert(header::TRACE_ID, trace);
        }
        match &inbox.publisher {
            Some(publisher) => {
                producer.prepare(&mut request);
                publisher.publish(request).await.map_err(Error::from)?;
            }
            None => producer.send_raw(request).await?,
        }
        Ok((waiting, self.topic, self.timeout))
    }
}

impl<'a, Resp: DeserializeOwned + Send + 'a> IntoFuture for Request<'a, Resp> {
    type Output = Result<Resp, RequestError>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (mut waiting, topic, timeout) = self.send().await?;
            match next_reply(&mut waiting, &topic, timeout).await? {
                (ReplyKind::Ok, reply) => decode(&reply),
                (ReplyKind::Error, reply) => Err(remote(&reply)),
                (ReplyKind::Chunk | ReplyKind::End, _) => Err(RequestError::Remote {
                    kind: "stream".to_owned(),
                    message: format!(
                        "the handler of `{topic}` replies with a stream: use `request_stream`"
                    ),
                }),
            }
        })
    }
}

/// A streamed request being built; `.await` sends it and gives the stream of its chunks.
/// Made by [`Producer::request_stream`].
#[must_use = "a request does nothing until it is awaited"]
pub struct StreamRequest<'a, Resp>(Request<'a, Resp>);

impl<Resp> StreamRequest<'_, Resp> {
    /// How long to wait for the first chunk, and then for each next one (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn timeout(self, timeout: Duration) -> Self {
        Self(self.0.timeout(timeout))
    }

    /// A key and headers.
    pub fn options(self, options: SendOptions) -> Self {
        Self(self.0.options(options))
    }
}

/// The chunks of a streamed reply, in order; it ends after the last one, or after an error.
pub type ReplyChunks<Resp> = BoxStream<'static, Result<Resp, RequestError>>;

impl<'a, Resp: DeserializeOwned + Send + 'static> IntoFuture for StreamRequest<'a, Resp> {
    type Output = Result<ReplyChunks<Resp>, RequestError>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let (waiting, topic, timeout) = self.0.send().await?;
            let chunks = futures::stream::unfold(Some((waiting, 0u64)), move |state| {
                let topic = topic.clone();
                async move {
                    let (mut waiting, mut next) = state?;
                    loop {
                        let (kind, reply) = match next_reply(&mut waiting, &topic, timeout).await {
                            Ok(got) => got,
                            Err(error) => return Some((Err(error), None)),
                        };
                        match kind {
                            ReplyKind::Chunk => {
                                let seq = reply
                                    .header(CHUNK_SEQUENCE)
                                    .and_then(|s| s.parse::<u64>().ok())
                                    .unwrap_or(next);
                                if seq < next {
                                    // Sent again by a retried attempt.
                                    continue;
                                }
                                next = seq + 1;
                                return Some((decode(&reply), Some((waiting, next))));
                            }
                            // A handler that does not stream: its one value.
                            ReplyKind::Ok => return Some((decode(&reply), None)),
                            ReplyKind::Error => return Some((Err(remote(&reply)), None)),
                            ReplyKind::End => return None,
                        }
                    }
                }
            });
            Ok(Box::pin(chunks) as ReplyChunks<Resp>)
        })
    }
}

/// The next reply to `waiting`'s request, within `timeout`.
async fn next_reply(
    waiting: &mut Waiting,
    topic: &str,
    timeout: Duration,
) -> Result<(ReplyKind, Message), RequestError> {
    let reply = tokio::time::timeout(timeout, waiting.replies.recv())
        .await
        .map_err(|_| RequestError::Timeout {
            topic: topic.to_owned(),
            timeout,
        })?
        .ok_or_else(|| {
            Error::from(crate::BrokerError::Closed {
                broker: "reply inbox",
            })
        })?;
    let kind = ReplyKind::of(&reply).unwrap_or(ReplyKind::Ok);
    Ok((kind, reply))
}

fn decode<Resp: DeserializeOwned>(reply: &Message) -> Result<Resp, RequestError> {
    serde_json::from_slice(&reply.payload).map_err(|source| RequestError::Decode {
        expected: std::any::type_name::<Resp>(),
        source,
    })
}

fn remote(reply: &Message) -> RequestError {
    #[derive(serde::Deserialize)]
    struct Failure {
        kind: String,
        message: String,
    }
    match serde_json::from_slice::<Failure>(&reply.payload) {
        Ok(Failure { kind, message }) => RequestError::Remote { kind, message },
        Err(_) => RequestError::Remote {
            kind: "unknown".to_owned(),
            message: String::from_utf8_lossy(&reply.payload).into_owned(),
        },
    }
}

impl Producer {
    /// Sends `request` to `topic` as JSON and waits for the handler's reply, decoded as
    /// `Resp`. Any handler whose `Ok` value is not `()` replies; one that fails for good
    /// sends its error, which arrives as [`RequestError::Remote`].
    ///
    /// ```no_run
    /// # async fn f(producer: messaging_core::Producer) -> Result<(), Box<dyn std::error::Error>> {
    /// #[derive(serde::Serialize)]
    /// struct AdviceRequest { question: String }
    /// #[derive(serde::Deserialize)]
    /// struct Advice { answer: String }
    ///
    /// let advice: Advice = producer
    ///     .request("guardian.requests", &AdviceRequest { question: "sleep?".into() })
    ///     .timeout(std::time::Duration::from_secs(5))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn request<Resp, T: Serialize + ?Sized>(
        &self,
        topic: &str,
        request: &T,
    ) -> Request<'_, Resp> {
        Request {
            producer: self,
            topic: topic.to_owned(),
            payload: serde_json::to_vec(request),
            timeout: DEFAULT_TIMEOUT,
            options: SendOptions::default(),
            reply: PhantomData,
        }
    }

    /// Sends `request` to a handler that replies with a stream
    /// ([`ReplyStream`](crate::reply::ReplyStream)); `.await` gives the chunks as they
    /// arrive.
    pub fn request_stream<Resp, T: Serialize + ?Sized>(
        &self,
        topic: &str,
        request: &T,
    ) -> StreamRequest<'_, Resp> {
        StreamRequest(self.request(topic, request))
    }
}
