//! Publishing (`XADD`), pipelined: each `publish` queues its command and waits for its own
//! reply, while one task sends what is queued as a single pipeline per round trip. A lone
//! publish leaves at once; concurrent ones share round trips instead of each paying the
//! client's per-request cost, which is most of a publish's CPU time.

use std::sync::Arc;

use messaging_core::BrokerError;
use redis::aio::ConnectionManager;
use redis::{Cmd, RedisError, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::{BROKER, is_connection_error};

/// The most commands one pipeline carries.
const MAX_PIPELINE: usize = 512;

type Reply = Result<(), Arc<RedisError>>;

struct Request {
    cmd: Cmd,
    done: oneshot::Sender<Reply>,
}

/// The queue in front of the shared connection.
pub(crate) struct Publisher {
    requests: mpsc::UnboundedSender<Request>,
}

impl Publisher {
    /// Starts the sending task on `conn`; it ends when the publisher is dropped.
    pub(crate) fn start(conn: ConnectionManager) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, receiver));
        Self { requests }
    }

    /// Sends `cmd` with the next pipeline and waits for its reply.
    pub(crate) async fn send(&self, cmd: Cmd) -> Result<(), BrokerError> {
        let (done, reply) = oneshot::channel();
        self.requests
            .send(Request { cmd, done })
            .map_err(|_| BrokerError::Closed { broker: BROKER })?;
        match reply.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if is_connection_error(&error) => {
                Err(BrokerError::connection(BROKER, error))
            }
            Ok(Err(error)) => Err(BrokerError::operation(BROKER, "publish", error)),
            Err(_) => Err(BrokerError::Closed { broker: BROKER }),
        }
    }
}

async fn run(mut conn: ConnectionManager, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_PIPELINE);
    while requests.recv_many(&mut batch, MAX_PIPELINE).await > 0 {
        let mut pipe = redis::pipe();
        // One reply per command, errors included, instead of one error for the pipeline.
        pipe.ignore_errors();
        let mut waiting = Vec::with_capacity(batch.len());
        for request in batch.drain(..) {
            pipe.add_command(request.cmd);
            waiting.push(request.done);
        }
        let mut replies = pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await;
        if let Err(error) = &replies
            && error.is_unrecoverable_error()
        {
            // A connection found dead (Redis restarted) fails the first request and is
            // replaced; one more try on the new connection spares the callers that error. An
            // entry written just before the connection broke may be written twice.
            tracing::debug!(%error, "publishing failed on a dropped connection; retrying once");
            replies = pipe.query_async(&mut conn).await;
        }
        match replies {
            Ok(replies) if replies.len() == waiting.len() => {
                for (done, reply) in waiting.into_iter().zip(replies) {
                    let _ = done.send(reply.map(drop).map_err(Arc::new));
                }
            }
            Ok(replies) => {
                let error = Arc::new(RedisError::from((
                    redis::ErrorKind::Parse,
                    "pipeline",
                    format!("{} replies to {} commands", replies.len(), waiting.len()),
                )));
                for done in waiting {
                    let _ = done.send(Err(Arc::clone(&error)));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for done in waiting {
                    let _ = done.send(Err(Arc::clone(&error)));
                }
            }
        }
    }
}
