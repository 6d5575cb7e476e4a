//! Acknowledgements (`XACK`), batched and pipelined: `ack` queues the entry and returns, and a
//! task sends what is queued, one `XACK` per stream per round trip. An idle consumer's
//! acknowledgement leaves at once; a busy one's share round trips instead of each waiting for
//! its own, which would serialise a lane of handlers on the network.
//!
//! At least once still holds: an `XACK` that fails (logged) leaves the entry pending, and it
//! is reclaimed and delivered again. `close` waits until the queue is sent.

use std::sync::Arc;

use messaging_core::broker::Acker;
use messaging_core::{BoxFuture, BrokerError, Message, Position};
use redis::{RedisError, Value};
use tokio::sync::{mpsc, oneshot};

use crate::consumer::Member;
use crate::entry::EntryId;
use crate::error::{BROKER, is_no_group};

/// The most entries one `XACK` round carries.
const MAX_BATCH: usize = 4096;

enum Request {
    Ack {
        stream: usize,
        id: EntryId,
    },
    /// Answered once everything queued before it was sent.
    Flush(oneshot::Sender<()>),
}

/// Acknowledges what one consumer delivered.
pub(crate) struct RedisAcker {
    requests: mpsc::UnboundedSender<Request>,
    member: Arc<Member>,
}

impl RedisAcker {
    pub(crate) fn new(member: Arc<Member>) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::clone(&member), receiver));
        Self { requests, member }
    }

    /// Queues the acknowledgement of `message` for the acknowledging task.
    fn queue(&self, message: &Message) -> Result<(), BrokerError> {
        match (&message.position, self.member.stream_index(&message.topic)) {
            (Position::StreamId(id), Some(stream)) => match id.parse::<EntryId>() {
                Ok(id) => self
                    .requests
                    .send(Request::Ack { stream, id })
                    .map_err(|_| BrokerError::Closed { broker: BROKER }),
                // Not an entry id this crate wrote: nothing to acknowledge here.
                Err(_) => Ok(()),
            },
            // A message this consumer did not deliver has nothing to acknowledge here.
            _ => Ok(()),
        }
    }

    /// Waits until every acknowledgement queued so far was sent (and answered or failed).
    pub(crate) async fn flush(&self) -> Result<(), BrokerError> {
        let (done, sent) = oneshot::channel();
        self.requests
            .send(Request::Flush(done))
            .map_err(|_| BrokerError::Closed { broker: BROKER })?;
        sent.await
            .map_err(|_| BrokerError::Closed { broker: BROKER })
    }
}

impl Acker for RedisAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        let queued = self.queue(message);
        Box::pin(async move { queued })
    }

    // Queued for the acknowledging task: nothing to wait for here.
    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        messaging_core::broker::ack_each(messages, |m| self.queue(m))
    }
}

/// Sends the queued acknowledgements, a batch per round trip, until every acker is gone.
async fn run(member: Arc<Member>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut ids: Vec<Vec<EntryId>> = vec![Vec::new(); member.streams.len()];
        let mut flushes = Vec::new();
        for request in batch.drain(..) {
            match request {
                Request::Ack { stream, id } => ids[stream].push(id),
                Request::Flush(done) => flushes.push(done),
            }
        }
        let count: usize = ids.iter().map(Vec::len).sum();
        if count > 0 {
            if let Err(error) = acknowledge(&member, &ids).await {
                tracing::warn!(group = %member.group, %error, entries = count, "XACK failed; the entries will be reclaimed and delivered again");
            }
            // Acknowledged or not, this consumer is done with them: no longer refreshed, so a
            // failed acknowledgement lets them idle out and be reclaimed.
            let mut held = member.held();
            let mut acked = member.acked();
            for (stream, ids) in ids.iter().enumerate() {
                for id in ids {
                    held.remove(&(stream, *id));
                    acked.insert((stream, *id));
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn acknowledge(member: &Member, ids: &[Vec<EntryId>]) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    for (stream, ids) in ids.iter().enumerate().filter(|(_, ids)| !ids.is_empty()) {
        let ids: Vec<String> = ids.iter().map(EntryId::to_string).collect();
        pipe.cmd("XACK")
            .arg(&member.streams[stream])
            .arg(&member.group)
            .arg(ids);
    }
    match pipe
        .query_async::<Vec<Value>>(&mut member.shared.conn())
        .await
    {
        Ok(_) => Ok(()),
        // The server lost the group (restart without persistence): nothing is left to acknowledge.
        Err(e) if is_no_group(&e) => Ok(()),
        Err(e) => Err(e),
    }
}
