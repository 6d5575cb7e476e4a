//! Request-reply on Redis: each instance's replies arrive on a stream of its own,
//! `messaging.replies.<uuid v7>` ([`REPLY_PREFIX`]), opened once per process, never one per
//! request.
//!
//! A reply is one `XADD … MAXLEN ~ <reply_maxlen>` and one `PEXPIRE <reply_ttl>` in a single
//! `MULTI`/`EXEC`: the stream never holds much more than the cap, and once replies stop
//! coming it expires, so the stream of a requester that is gone disappears by itself and a
//! reply to it is no error. The requester reads its stream with `XREAD BLOCK` (no group:
//! only this instance reads it) on a connection of its own, since a blocking read would
//! stall the shared one, and trims away what it has handed on (`XTRIM … MINID`), so a live
//! but idle requester leaves at most an empty stream, which expires too.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::reply::ReplyInbox;
use messaging_core::{BrokerError, Message, OutgoingMessage, TopicName};
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use crate::broker::Shared;
use crate::entry::{EntryId, parse_read, xadd};
use crate::error::{broker_error, is_connection_error, own_error};

/// The start of every reply stream's name; a UUID v7 of the instance follows.
pub const REPLY_PREFIX: &str = "messaging.replies.";

/// The most replies one `XREAD` takes.
const READ_COUNT: usize = 100;

/// Replies read and not yet taken by the requester. When it falls behind, the reader waits
/// and the rest stay in the stream (capped by the responders' `MAXLEN`).
const INBOX_CAPACITY: usize = 256;

/// The longest wait between attempts to reconnect the reader.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Opens this instance's reply stream and starts its reader. The reading connection is made
/// here, so an unreachable server fails the call instead of leaving a dead inbox.
pub(crate) async fn open(shared: Arc<Shared>) -> Result<ReplyInbox, BrokerError> {
    let address = format!("{REPLY_PREFIX}{}", uuid::Uuid::now_v7());
    let mut reader = Reader {
        topic: TopicName::from(address.as_str()),
        address,
        shared,
        conn: None,
        last: EntryId::ZERO,
        trimmed: EntryId::ZERO,
    };
    reader
        .connection()
        .await
        .map_err(|e| broker_error("open_replies", e))?;
    let (sender, replies) = mpsc::channel(INBOX_CAPACITY);
    let inbox = ReplyInbox::new(reader.address.clone(), replies);
    tokio::spawn(reader.run(sender));
    Ok(inbox)
}

/// Publishes `reply` to the stream its request named, capped and set to expire, in one
/// transaction so that no reply leaves a stream that never expires.
pub(crate) async fn publish(shared: &Shared, reply: OutgoingMessage) -> Result<(), BrokerError> {
    let options = &shared.options;
    let entry =
        xadd(&reply, Some(options.reply_maxlen)).map_err(|e| own_error("publish_reply", e))?;
    let mut transaction = redis::pipe();
    transaction.atomic().add_command(entry).ignore();
    // A stream this crate did not name (a foreign requester's own) is capped, not made to
    // expire: it is not ours to delete.
    if reply.topic.starts_with(REPLY_PREFIX) {
        let ttl = u64::try_from(options.reply_ttl.as_millis()).unwrap_or(u64::MAX);
        transaction
            .cmd("PEXPIRE")
            .arg(&reply.topic)
            .arg(ttl.max(1))
            .ignore();
    }
    transaction
        .query_async::<()>(&mut shared.conn())
        .await
        .map_err(|e| broker_error("publish_reply", e))
}

/// The task that reads one reply stream into its inbox.
struct Reader {
    shared: Arc<Shared>,
    address: String,
    topic: TopicName,
    /// The dedicated connection of the blocking reads; `None` until (re)connected.
    conn: Option<MultiplexedConnection>,
    /// The last entry read: the next `XREAD` continues after it.
    last: EntryId,
    /// Everything up to here is trimmed from the stream.
    trimmed: EntryId,
}

impl Reader {
    /// Reads until the requester drops its inbox, then deletes the stream.
    ///
    /// A lost connection is reconnected here, with back-off, for as long as the inbox
    /// lives, rather than closing the inbox for the requester to open another: the address
    /// stays valid, replies published meanwhile wait in the stream, and reading resumes
    /// after the last entry read, so requests in flight still get their replies. Any other
    /// error (the key turned into another type) closes the inbox, and the requester opens a
    /// new one at a new address.
    async fn run(mut self, sender: mpsc::Sender<Message>) {
        let mut backoff = Duration::ZERO;
        'reading: loop {
            let read = tokio::select! {
                biased;
                () = sender.closed() => break,
                read = self.read() => read,
            };
            match read {
                Ok(replies) => {
                    if !backoff.is_zero() {
                        tracing::info!(address = %self.address, "reply stream readable again");
                        backoff = Duration::ZERO;
                    }
                    for reply in replies {
                        if sender.send(reply).await.is_err() {
                            break 'reading;
                        }
                    }
                }
                Err(error) if is_connection_error(&error) => {
                    if backoff.is_zero() {
                        tracing::warn!(address = %self.address, %error, "reading replies failed; reconnecting");
                    }
                    self.conn = None;
                    backoff = (backoff * 2).clamp(Duration::from_millis(50), MAX_BACKOFF);
                    tokio::select! {
                        () = sender.closed() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
                Err(error) => {
                    tracing::error!(address = %self.address, %error, "reading replies failed; closing the reply inbox");
                    return;
                }
            }
        }
        // The requester is done with this address: nothing should be left behind. Replies
        // still on their way recreate the stream, which then expires.
        let deleted = redis::cmd("DEL")
            .arg(&self.address)
            .query_async::<Value>(&mut self.shared.conn())
            .await;
        if let Err(error) = deleted {
            tracing::debug!(address = %self.address, %error, "deleting a closed reply stream failed; it expires");
        }
    }

    /// One `XREAD … BLOCK` after the last entry read, preceded (in the same round trip) by
    /// the trim of what was handed on since the previous read.
    async fn read(&mut self) -> Result<Vec<Message>, redis::RedisError> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        if self.last > self.trimmed {
            pipe.cmd("XTRIM")
                .arg(&self.address)
                .arg("MINID")
                .arg(self.last.next().to_string())
                .ignore();
        }
        let block = u64::try_from(self.shared.options.block.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&self.address)
            .arg(self.last.to_string());
        let (reply,): (Value,) = pipe.query_async(&mut conn).await?;
        self.trimmed = self.last;
        let protocol = |e: crate::error::RedisBrokerError| {
            redis::RedisError::from((redis::ErrorKind::Parse, "XREAD", e.to_string()))
        };
        let mut replies = Vec::new();
        for (_, entries) in parse_read("XREAD", reply).map_err(protocol)? {
            for entry in entries {
                let id: EntryId = entry.id.parse().map_err(protocol)?;
                self.last = self.last.max(id);
                replies.extend(entry.into_message(self.topic.clone()));
            }
        }
        Ok(replies)
    }

    /// The reading connection, connecting first if needed. It carries the stream's name as
    /// its client name, so `CLIENT LIST` shows which instance reads which stream; a server
    /// that refuses `CLIENT SETNAME` (an ACL without it) is read from all the same.
    async fn connection(&mut self) -> Result<MultiplexedConnection, redis::RedisError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let mut conn = self.shared.dedicated_connection().await?;
        let named = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.address)
            .query_async::<Value>(&mut conn)
            .await;
        match named {
            Err(error) if is_connection_error(&error) => return Err(error),
            Err(error) => {
                tracing::debug!(address = %self.address, %error, "cannot name the reply reader's connection");
            }
            Ok(_) => {}
        }
        self.conn = Some(conn.clone());
        Ok(conn)
    }
}
