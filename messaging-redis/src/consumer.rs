//! One named member of a consumer group: the read loop (`XREADGROUP`, `XAUTOCLAIM`), what it
//! holds, and the keeper task that refreshes held entries and hands them back when the
//! consumer is dropped.
//!
//! Cancel safety: a read that may have assigned entries to this consumer marks it `unsure`
//! until its reply was taken in. Should the future be dropped in between (or the connection
//! fail), the next call first re-reads this consumer's own pending list from `0`, skipping
//! what it already holds, so nothing assigned is lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use messaging_core::broker::{Acker, Consumer};
use messaging_core::{BoxFuture, BrokerError, Message, TopicNames};
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::acker::RedisAcker;
use crate::broker::{Shared, create_group, not_a_stream};
use crate::entry::{EntryId, RawEntry, parse_autoclaim, parse_read};
use crate::error::{broker_error, is_connection_error, is_no_group, is_wrong_type};

/// The most entries one `XPENDING`/`XCLAIM` round of the refresh takes.
const REFRESH_PAGE: usize = 1000;

/// This consumer within its group, shared with its acker and keeper.
pub(crate) struct Member {
    pub shared: Arc<Shared>,
    pub group: String,
    pub name: String,
    pub streams: Vec<String>,
    /// The streams' names, shared by the messages received.
    pub names: TopicNames,
    /// Entries delivered and not yet acknowledged: a re-read of the pending list skips them.
    held: Mutex<HashSet<(usize, EntryId)>>,
    /// Entries acknowledged since the current read was sent: a re-read of the pending list
    /// sent before their `XACK` was applied may still return them, after they left `held`.
    acked: Mutex<HashSet<(usize, EntryId)>>,
}

impl Member {
    pub(crate) fn held(&self) -> MutexGuard<'_, HashSet<(usize, EntryId)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Member::acked`]; cleared as each read is sent.
    pub(crate) fn acked(&self) -> MutexGuard<'_, HashSet<(usize, EntryId)>> {
        self.acked.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stream_index(&self, topic: &str) -> Option<usize> {
        self.streams.iter().position(|s| s == topic)
    }

    /// Resets the idle time of the held entries idle for a `period`, so that
    /// no other member's `XAUTOCLAIM` takes an entry this live consumer still works on (a
    /// handler in a retry back-off longer than `reclaim_idle`). Run every `period` (a quarter
    /// of `reclaim_idle`), it keeps every entry's idle time under about half of it.
    ///
    /// The server says which entries are due (`XPENDING … IDLE <period> … <self>`), so no
    /// clock but its own counts. `XCLAIM … <period> … JUSTID` then claims only entries still
    /// idle that long: one acknowledged meanwhile is not pending and stays gone, and one
    /// another member took over in between has just been claimed and stays theirs.
    async fn refresh(&self, period: Duration) {
        for (index, stream) in self.streams.iter().enumerate() {
            if let Err(error) = self.refresh_stream(index, stream, period).await {
                tracing::warn!(%stream, group = %self.group, %error, "refreshing held entries failed");
            }
        }
    }

    async fn refresh_stream(
        &self,
        index: usize,
        stream: &str,
        period: Duration,
    ) -> Result<(), RedisError> {
        let idle = period.as_millis() as u64;
        let mut conn = self.shared.conn();
        let mut from = "-".to_owned();
        loop {
            let due: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&self.group)
                .arg("IDLE")
                .arg(idle)
                .arg(&from)
                .arg("+")
                .arg(REFRESH_PAGE)
                .arg(&self.name)
                .query_async(&mut conn)
                .await?;
            let Some(last) = due.last() else {
                return Ok(());
            };
            from = format!("({}", last.0);
            // Only what is still held: an entry whose `XACK` failed is no longer, and idles
            // out to be reclaimed and delivered again.
            let ids: Vec<&str> = {
                let held = self.held();
                due.iter()
                    .map(|p| p.0.as_str())
                    .filter(|id| id.parse().is_ok_and(|id| held.contains(&(index, id))))
                    .collect()
            };
            if ids.is_empty() {
                if due.len() < REFRESH_PAGE {
                    return Ok(());
                }
                continue;
            }
            redis::cmd("XCLAIM")
                .arg(stream)
                .arg(&self.group)
                .arg(&self.name)
                .arg(idle)
                .arg(&ids)
                .arg("JUSTID")
                .query_async::<Value>(&mut conn)
                .await?;
            if due.len() < REFRESH_PAGE {
                return Ok(());
            }
        }
    }

    /// Marks every entry pending under this consumer's name as idle for long, so the next
    /// `XAUTOCLAIM` of any consumer of the group takes it. Returns how many there were.
    async fn release_all(&self) -> Result<usize, RedisError> {
        let idle = (self.shared.options.reclaim_idle * 2).max(Duration::from_secs(24 * 3600));
        let mut conn = self.shared.conn();
        let mut released = 0;
        for stream in &self.streams {
            let mut from = "-".to_owned();
            loop {
                let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(&self.group)
                    .arg(&from)
                    .arg("+")
                    .arg(1000)
                    .arg(&self.name)
                    .query_async(&mut conn)
                    .await?;
                let Some(last) = pending.last() else { break };
                from = format!("({}", last.0);
                let ids: Vec<&str> = pending.iter().map(|p| p.0.as_str()).collect();
                redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg(0)
                    .arg(&ids)
                    .arg("IDLE")
                    .arg(idle.as_millis() as u64)
                    .arg("JUSTID")
                    .query_async::<Value>(&mut conn)
                    .await?;
                released += ids.len();
            }
        }
        self.held().clear();
        Ok(released)
    }

    /// Removes the names of dead consumers from the group: idle for `forget_after` with nothing
    /// pending (what they held was reclaimed). Deleting a name that has nothing pending loses
    /// nothing, and a consumer that was not dead after all is recreated by its next read.
    async fn forget_dead(&self) -> Result<usize, RedisError> {
        let forget_after = self.shared.options.forget_after.as_millis() as i64;
        let mut conn = self.shared.conn();
        let mut forgotten = 0;
        for stream in &self.streams {
            let consumers: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(&self.group)
                .query_async(&mut conn)
                .await?;
            for consumer in consumers {
                let (
                    Some(Value::BulkString(name)),
                    Some(Value::Int(pending)),
                    Some(Value::Int(idle)),
                ) = (
                    consumer.get("name"),
                    consumer.get("pending"),
                    consumer.get("idle"),
                )
                else {
                    continue;
                };
                if *name == self.name.as_bytes() || *pending > 0 || *idle < forget_after {
                    continue;
                }
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(stream)
                    .arg(&self.group)
                    .arg(&name[..])
                    .query_async::<Value>(&mut conn)
                    .await?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Leaves the group for good when nothing is pending under this name any more.
    async fn leave(&self) -> Result<(), RedisError> {
        if self.release_all().await? > 0 {
            // The name must stay: deleting a consumer drops its pending entries.
            return Ok(());
        }
        let mut conn = self.shared.conn();
        for stream in &self.streams {
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(stream)
                .arg(&self.group)
                .arg(&self.name)
                .query_async::<Value>(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// How the keeper task is told to stop.
enum Stop {
    /// `close` settles the consumer itself.
    Closing,
}

/// Refreshes held entries every period and forgets dead consumers now and then; when the
/// consumer is dropped without `close`, hands what it held back to the group (if so
/// configured) and ends.
async fn keep(member: Arc<Member>, mut stop: oneshot::Receiver<Stop>) {
    let period = member.shared.options.keeper_period();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut forget = tokio::time::interval(member.shared.options.forget_period());
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let dropped = loop {
        tokio::select! {
            stopped = &mut stop => break stopped.is_err(),
            _ = tick.tick() => member.refresh(period).await,
            _ = forget.tick() => match member.forget_dead().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(group = %member.group, consumers = n, "forgot dead consumers"),
                // NOGROUP while the server lost the group, a dropped connection …: next time.
                Err(error) => tracing::debug!(group = %member.group, %error, "looking for dead consumers failed"),
            },
        }
    };
    if dropped && member.shared.options.release_on_drop {
        match member.release_all().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(group = %member.group, consumer = %member.name, entries = n, "dropped consumer handed its entries back")
            }
            Err(error) => {
                tracing::warn!(group = %member.group, consumer = %member.name, %error, "handing entries back failed; they are reclaimed after the idle time")
            }
        }
    }
}

/// A consumer of one group on one or more streams.
pub(crate) struct RedisConsumer {
    member: Arc<Member>,
    acker: Arc<RedisAcker>,
    /// The dedicated connection of the blocking reads; `None` until (re)connected.
    reader: Option<MultiplexedConnection>,
    /// Messages read beyond what the caller asked for (`COUNT` applies per stream).
    ready: VecDeque<Arc<Message>>,
    /// A read may have assigned entries whose reply was not taken in.
    unsure: bool,
    /// Per stream: where the re-read of this consumer's own pending list continues.
    backlog: Vec<Option<EntryId>>,
    /// Per stream: where the current `XAUTOCLAIM` round continues.
    reclaim: Vec<Option<EntryId>>,
    next_reclaim: Instant,
    /// The server lost the groups (restart without persistence): create them again.
    recreate_groups: bool,
    keeper: Option<oneshot::Sender<Stop>>,
}

impl RedisConsumer {
    pub(crate) fn new(shared: Arc<Shared>, group: String, streams: Vec<String>) -> Self {
        let name = format!(
            "{}-{}-{:08x}",
            shared.options.consumer_prefix,
            std::process::id(),
            fastrand::u32(..)
        );
        let member = Arc::new(Member {
            shared,
            group,
            name,
            names: TopicNames::new(&streams),
            streams,
            held: Mutex::new(HashSet::new()),
            acked: Mutex::new(HashSet::new()),
        });
        let (keeper, stop) = oneshot::channel();
        tokio::spawn(keep(Arc::clone(&member), stop));
        let streams = member.streams.len();
        Self {
            acker: Arc::new(RedisAcker::new(Arc::clone(&member))),
            member,
            reader: None,
            ready: VecDeque::new(),
            // On start, this consumer's own pending entries come first.
            unsure: true,
            backlog: vec![None; streams],
            reclaim: vec![None; streams],
            next_reclaim: Instant::now(),
            recreate_groups: false,
            keeper: Some(keeper),
        }
    }

    async fn fetch(&mut self, max: usize) -> Result<Vec<Arc<Message>>, BrokerError> {
        let max = max.max(1);
        let mut no_group_retried = false;
        loop {
            if !self.ready.is_empty() {
                let n = max.min(self.ready.len());
                return Ok(self.ready.drain(..n).collect());
            }
            match self.step(max).await {
                Ok(()) => {}
                Err(e) if is_no_group(&e) && !no_group_retried => {
                    tracing::warn!(group = %self.member.group, error = %e, "the group is gone from the server; creating it again");
                    no_group_retried = true;
                    self.recreate_groups = true;
                }
                // A stream key turned into another type: this group's reads fail until it is
                // fixed (the caller retries), naming the key.
                Err(e) if is_wrong_type(&e) => return Err(self.wrong_type(e).await),
                Err(e) => {
                    if is_no_group(&e) {
                        self.recreate_groups = true;
                    }
                    if is_connection_error(&e) {
                        self.reader = None;
                        self.unsure = true;
                    }
                    return Err(broker_error("next_batch", e));
                }
            }
        }
    }

    /// The error naming the first of this consumer's keys that is not a stream.
    async fn wrong_type(&self, error: RedisError) -> BrokerError {
        let mut conn = self.member.shared.conn();
        for stream in &self.member.streams {
            let kind = redis::cmd("TYPE")
                .arg(stream)
                .query_async::<String>(&mut conn)
                .await;
            if matches!(&kind, Ok(kind) if kind != "stream" && kind != "none") {
                return not_a_stream(&mut conn, "next_batch", stream).await;
            }
        }
        broker_error("next_batch", error)
    }

    /// One step of the read loop; what it reads lands in `ready`.
    async fn step(&mut self, max: usize) -> Result<(), RedisError> {
        if self.recreate_groups {
            let mut conn = self.member.shared.conn();
            for stream in &self.member.streams {
                // Everything in a stream the server lost its group for was published after.
                create_group(&mut conn, stream, &self.member.group, "0").await?;
            }
            self.recreate_groups = false;
        }
        if self.unsure {
            self.backlog.fill(Some(EntryId::ZERO));
            self.unsure = false;
        }
        // What was acknowledged before this read is sent cannot come back in its reply.
        self.member.acked().clear();
        if self.backlog.iter().any(Option::is_some) {
            return self.read_backlog(max).await;
        }
        if Instant::now() >= self.next_reclaim {
            return self.reclaim_step(max).await;
        }
        self.read_new(max).await
    }

    /// Re-reads this consumer's own pending entries (`XREADGROUP … <id>`, no blocking).
    async fn read_backlog(&mut self, max: usize) -> Result<(), RedisError> {
        let (streams, ids): (Vec<usize>, Vec<String>) = self
            .backlog
            .iter()
            .enumerate()
            .filter_map(|(i, cursor)| cursor.map(|c| (i, c.to_string())))
            .unzip();
        let mut cmd = self.read_command(max, None);
        for &i in &streams {
            cmd.arg(&self.member.streams[i]);
        }
        cmd.arg(&ids);
        let reply = cmd.query_async::<Value>(&mut self.reader().await?).await?;
        let read = parse_read("XREADGROUP", reply).map_err(|e| protocol_error("XREADGROUP", e))?;
        for &i in &streams {
            let entries = read
                .iter()
                .find(|(s, _)| *s == self.member.streams[i])
                .map_or(&[][..], |(_, entries)| &entries[..]);
            self.backlog[i] = match entries.last() {
                Some(last) => Some(
                    last.id
                        .parse()
                        .map_err(|e| protocol_error("XREADGROUP", e))?,
                ),
                None => None,
            };
        }
        for (stream, entries) in read {
            self.take_in(&stream, entries).await?;
        }
        Ok(())
    }

    /// One `XAUTOCLAIM` per stream still in the current round: entries of consumers idle for
    /// `reclaim_idle` become this consumer's.
    async fn reclaim_step(&mut self, max: usize) -> Result<(), RedisError> {
        if self.reclaim.iter().all(Option::is_none) {
            self.reclaim.fill(Some(EntryId::ZERO));
        }
        let min_idle = self.member.shared.options.reclaim_idle.as_millis() as u64;
        let mut conn = self.member.shared.conn();
        for i in 0..self.reclaim.len() {
            let Some(cursor) = self.reclaim[i] else {
                continue;
            };
            self.unsure = true;
            let reply = redis::cmd("XAUTOCLAIM")
                .arg(&self.member.streams[i])
                .arg(&self.member.group)
                .arg(&self.member.name)
                .arg(min_idle)
                .arg(cursor.to_string())
                .arg("COUNT")
                .arg(max)
                .query_async::<Value>(&mut conn)
                .await?;
            let claimed = parse_autoclaim(reply).map_err(|e| protocol_error("XAUTOCLAIM", e))?;
            self.reclaim[i] = (claimed.next != EntryId::ZERO).then_some(claimed.next);
            if !claimed.deleted.is_empty() {
                tracing::warn!(stream = %self.member.streams[i], group = %self.member.group, ids = ?claimed.deleted, "pending entries were deleted before being handled");
            }
            let stream = self.member.streams[i].clone();
            let count = claimed.entries.len();
            self.take_in(&stream, claimed.entries).await?;
            self.unsure = false;
            if count > 0 {
                tracing::info!(%stream, group = %self.member.group, consumer = %self.member.name, entries = count, "reclaimed entries of an idle consumer");
            }
        }
        if self.reclaim.iter().all(Option::is_none) {
            self.next_reclaim = Instant::now() + self.member.shared.options.reclaim_interval();
        }
        Ok(())
    }

    /// Waits for new entries (`XREADGROUP … BLOCK … >`), at most until the next reclaim round.
    async fn read_new(&mut self, max: usize) -> Result<(), RedisError> {
        let until_reclaim = self.next_reclaim.saturating_duration_since(Instant::now());
        let block = self
            .member
            .shared
            .options
            .block
            .min(until_reclaim)
            .max(Duration::from_millis(1));
        let mut cmd = self.read_command(max, Some(block));
        cmd.arg(&self.member.streams);
        for _ in &self.member.streams {
            cmd.arg(">");
        }
        let mut reader = self.reader().await?;
        self.unsure = true;
        let reply = cmd.query_async::<Value>(&mut reader).await?;
        let read = parse_read("XREADGROUP", reply).map_err(|e| protocol_error("XREADGROUP", e))?;
        for (stream, entries) in read {
            self.take_in(&stream, entries).await?;
        }
        self.unsure = false;
        Ok(())
    }

    fn read_command(&self, max: usize, block: Option<Duration>) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.member.group)
            .arg(&self.member.name);
        cmd.arg("COUNT").arg(max);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        cmd
    }

    /// The reading connection (a cheap handle), connecting first if needed.
    async fn reader(&mut self) -> Result<MultiplexedConnection, RedisError> {
        match &self.reader {
            Some(reader) => Ok(reader.clone()),
            None => {
                let reader = self.member.shared.dedicated_connection().await?;
                self.reader = Some(reader.clone());
                Ok(reader)
            }
        }
    }

    /// Records read entries as held and queues them, skipping those already held (a re-read
    /// of the pending list returns them again). Entries deleted while pending are
    /// acknowledged, so they leave the pending list instead of coming back for ever.
    async fn take_in(&mut self, stream: &str, entries: Vec<RawEntry>) -> Result<(), RedisError> {
        let Some(index) = self.member.stream_index(stream) else {
            return Ok(());
        };
        let topic = self.member.names.get(stream);
        let mut deleted = Vec::new();
        {
            let mut held = self.member.held();
            let acked = self.member.acked();
            for entry in entries {
                let id: EntryId = entry
                    .id
                    .parse()
                    .map_err(|e| protocol_error("XREADGROUP", e))?;
                if held.contains(&(index, id)) || acked.contains(&(index, id)) {
                    continue;
                }
                match entry.into_message(topic.clone()) {
                    Some(message) => {
                        held.insert((index, id));
                        self.ready.push_back(Arc::new(message));
                    }
                    None => deleted.push(id.to_string()),
                }
            }
        }
        if !deleted.is_empty() {
            tracing::warn!(%stream, group = %self.member.group, ids = ?deleted, "pending entries were deleted before being handled; acknowledging them");
            redis::cmd("XACK")
                .arg(stream)
                .arg(&self.member.group)
                .arg(&deleted)
                .query_async::<Value>(&mut self.member.shared.conn())
                .await?;
        }
        Ok(())
    }
}

fn protocol_error(command: &'static str, error: crate::error::RedisBrokerError) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, command, error.to_string()))
}

impl Consumer for RedisConsumer {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        Box::pin(self.fetch(max))
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::clone(&self.acker) as Arc<dyn Acker>
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.send(Stop::Closing);
        }
        let member = Arc::clone(&self.member);
        let acker = Arc::clone(&self.acker);
        Box::pin(async move {
            acker.flush().await?;
            member.leave().await.map_err(|e| broker_error("close", e))?;
            tracing::debug!(group = %member.group, consumer = %member.name, "left the group");
            Ok(())
        })
    }
}

impl std::fmt::Debug for RedisConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConsumer")
            .field("group", &self.member.group)
            .field("name", &self.member.name)
            .field("streams", &self.member.streams)
            .finish_non_exhaustive()
    }
}
