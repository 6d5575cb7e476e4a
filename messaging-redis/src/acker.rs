//! Acknowledgements (`XACK`), batched: acknowledgements that arrive while one `XACK` is on its
//! way go out together in the next, one command per stream. An idle consumer's
//! acknowledgement leaves at once; a busy one's share round trips.

use std::sync::Arc;

use messaging_core::broker::Acker;
use messaging_core::{BoxFuture, BrokerError, Message, Position};
use redis::{RedisError, Value};
use tokio::sync::{mpsc, oneshot};

use crate::consumer::Member;
use crate::entry::EntryId;
use crate::error::{BROKER, is_no_group};

/// The most entries one `XACK` round carries.
const MAX_BATCH: usize = 1024;

type Outcome = Result<(), Arc<RedisError>>;

struct Request {
    stream: usize,
    id: EntryId,
    done: oneshot::Sender<Outcome>,
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
}

impl Acker for RedisAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            // A message this consumer did not deliver has nothing to acknowledge here.
            let (Position::StreamId(id), Some(stream)) =
                (&message.position, self.member.stream_index(&message.topic))
            else {
                return Ok(());
            };
            let Ok(id) = id.parse::<EntryId>() else {
                return Ok(());
            };
            let (done, outcome) = oneshot::channel();
            self.requests
                .send(Request { stream, id, done })
                .map_err(|_| BrokerError::Closed { broker: BROKER })?;
            match outcome.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(BrokerError::operation(BROKER, "ack", error)),
                Err(_) => Err(BrokerError::Closed { broker: BROKER }),
            }
        })
    }
}

/// Sends the queued acknowledgements, a batch per round trip, until every acker is gone.
async fn run(member: Arc<Member>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let outcome = acknowledge(&member, &batch).await.map_err(Arc::new);
        if let Err(error) = &outcome {
            tracing::warn!(group = %member.group, %error, entries = batch.len(), "XACK failed; the entries will be reclaimed and delivered again");
        }
        {
            // Acknowledged or not, this consumer is done with them: no longer refreshed, a
            // failed acknowledgement lets them idle out and be reclaimed.
            let mut held = member.held();
            for request in &batch {
                held.remove(&(request.stream, request.id));
            }
        }
        for request in batch.drain(..) {
            let _ = request.done.send(outcome.clone());
        }
    }
}

async fn acknowledge(member: &Member, batch: &[Request]) -> Result<(), RedisError> {
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); member.streams.len()];
    for request in batch {
        ids[request.stream].push(request.id.to_string());
    }
    let mut pipe = redis::pipe();
    for (stream, ids) in ids.iter().enumerate().filter(|(_, ids)| !ids.is_empty()) {
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
