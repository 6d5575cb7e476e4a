//! Celery's Redis transport as kombu speaks it: a queue is a list, a task is a JSON envelope
//! `LPUSH`ed onto it and taken from its other end; `queue\x06\x16N` are the lists of
//! priorities 3, 6 and 9, read after the queue itself.
//!
//! Taking a task moves it (`LMOVE`/`BLMOVE`, atomic) into a processing list of this
//! instance, `_messaging.celery.unacked:<instance>:<queue>`, where it stays until the
//! runtime acknowledges it (`LREM`). Each instance keeps a liveness key
//! `_messaging.celery.alive:<instance>` alive, and lists its processing lists in the hash
//! `_messaging.celery.unacked`. Every instance, at start and then every half liveness
//! period, puts the tasks of instances whose liveness key has expired back at the taking
//! end of their queue, oldest first, so that they are taken next.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use messaging_core::config::mask_url;
use messaging_core::{Message, OutgoingMessage, Position};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Value};
use serde_json::{Map, Value as Json, json};

use crate::error::CeleryError;
use crate::protocol::{CONTENT_ENCODING, CONTENT_TYPE, Incoming, Task};
use crate::settings::{CeleryOptions, URL_VARIABLE};

/// The separator kombu puts between a queue's name and a priority.
const PRIORITY_SEPARATOR: &str = "\x06\x16";
/// kombu's priority steps besides 0 (the queue itself), in the order its worker reads them.
const PRIORITY_STEPS: [u8; 3] = [3, 6, 9];
/// The hash of processing lists: list name → queue.
const REGISTRY: &str = "_messaging.celery.unacked";
const PROCESSING_PREFIX: &str = "_messaging.celery.unacked:";
const ALIVE_PREFIX: &str = "_messaging.celery.alive:";
/// How many tasks one fetch takes at most (one pipeline).
const FETCH_MAX: usize = 100;

/// Puts a task back at the taking end of its queue, if it is still in the processing list
/// (not acknowledged, not restored by someone else meanwhile).
const GIVE_BACK: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0";

/// Forgets a processing list once it is empty.
const FORGET_EMPTY: &str = r"
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('HDEL', KEYS[2], KEYS[1])
end
return 0";

/// The Redis side of one broker.
pub(crate) struct RedisTransport {
    client: Client,
    conn: ConnectionManager,
    /// This instance's id in processing-list and liveness-key names.
    instance: String,
    block: Duration,
    liveness: Duration,
}

impl RedisTransport {
    /// Builds the client, without connecting; a URL that can never work is a configuration
    /// error naming `CELERY_BROKER_URL`.
    pub(crate) fn client(url: &str) -> Result<Client, CeleryError> {
        Client::open(url).map_err(|e| {
            let message = e.to_string().replace(url, &mask_url(url));
            CeleryError::config(
                URL_VARIABLE,
                format!(
                    "`{}` is not a Redis URL ({message}); write redis://[:password@]host[:port][/db]",
                    mask_url(url)
                ),
            )
        })
    }

    pub(crate) async fn connect(options: &CeleryOptions) -> Result<Self, CeleryError> {
        let client = Self::client(&options.url)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        let transport = Self {
            client,
            conn,
            instance: uuid::Uuid::now_v7().simple().to_string(),
            block: options.block,
            liveness: options.liveness.max(Duration::from_millis(200)),
        };
        transport.refresh(&[]).await?;
        Ok(transport)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// How often the liveness key is refreshed, and dead instances are looked for.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.liveness / 4
    }

    /// The processing list of `queue` in this instance.
    pub(crate) fn processing(&self, queue: &str) -> String {
        format!("{PROCESSING_PREFIX}{}:{queue}", self.instance)
    }

    /// Sends a task: kombu's envelope, `LPUSH`ed onto the queue (priority 0).
    pub(crate) async fn publish_task(&self, queue: &str, task: &Task) -> Result<(), CeleryError> {
        let envelope = envelope(queue, task);
        redis::cmd("LPUSH")
            .arg(queue)
            .arg(envelope.to_string())
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Keeps a message that is not a task (a dead-letter record) in a plain list named by
    /// its topic, oldest first. Only the body is kept: a record carries its own key and
    /// headers.
    pub(crate) async fn publish_plain(&self, message: &OutgoingMessage) -> Result<(), CeleryError> {
        redis::cmd("RPUSH")
            .arg(&message.topic)
            .arg(&message.payload[..])
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The first `limit` entries of the list `topic`, oldest first.
    pub(crate) async fn browse(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<Message>, CeleryError> {
        let Some(last) = limit.checked_sub(1) else {
            return Ok(Vec::new());
        };
        let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(topic)
            .arg(0)
            .arg(last)
            .query_async(&mut self.conn())
            .await?;
        Ok(entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| Message::new(topic, entry).with_position(Position::Offset(i as u64)))
            .collect())
    }

    /// Removes one occurrence of each of `entries` from the list `topic`.
    pub(crate) async fn remove(&self, topic: &str, entries: &[Bytes]) -> Result<(), CeleryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.cmd("LREM").arg(topic).arg(1).arg(&entry[..]).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Acknowledges tasks taken from `queue`: they leave its processing list.
    pub(crate) async fn ack(&self, queue: &str, raws: &[Bytes]) -> Result<(), CeleryError> {
        let processing = self.processing(queue);
        let mut pipe = redis::pipe();
        for raw in raws {
            pipe.cmd("LREM")
                .arg(&processing)
                .arg(1)
                .arg(&raw[..])
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Puts tasks taken from `queue` back where they are taken next.
    pub(crate) async fn give_back(&self, queue: &str, raws: &[Bytes]) -> Result<(), CeleryError> {
        let processing = self.processing(queue);
        let mut pipe = redis::pipe();
        for raw in raws {
            pipe.cmd("EVAL")
                .arg(GIVE_BACK)
                .arg(2)
                .arg(&processing)
                .arg(queue)
                .arg(&raw[..])
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Puts back every task of this instance's processing list of `queue` that is not in
    /// `held` (taken by a read whose reply was lost), or all of them with `held` `None`
    /// (the queue is no longer read here).
    pub(crate) async fn release(
        &self,
        queue: &str,
        held: Option<&HashSet<Bytes>>,
    ) -> Result<usize, CeleryError> {
        let processing = self.processing(queue);
        let mut conn = self.conn();
        let released = match held {
            None => restore(&mut conn, &processing, queue).await?,
            Some(held) => {
                let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(&processing)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await?;
                let lost: Vec<Bytes> = entries
                    .into_iter()
                    .map(Bytes::from)
                    .filter(|raw| !held.contains(raw))
                    .collect();
                self.give_back(queue, &lost).await?;
                lost.len()
            }
        };
        redis::cmd("EVAL")
            .arg(FORGET_EMPTY)
            .arg(2)
            .arg(&processing)
            .arg(REGISTRY)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(released)
    }

    /// Refreshes this instance's liveness key and lists the processing lists of `queues`.
    pub(crate) async fn refresh(&self, queues: &[String]) -> Result<(), CeleryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{ALIVE_PREFIX}{}", self.instance))
            .arg(1)
            .arg("PX")
            .arg(self.liveness.as_millis() as u64)
            .ignore();
        for queue in queues {
            pipe.cmd("HSET")
                .arg(REGISTRY)
                .arg(self.processing(queue))
                .arg(queue)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Puts the tasks held by instances that are gone (their liveness key expired) back in
    /// their queues; returns how many.
    pub(crate) async fn restore_dead(&self) -> Result<usize, CeleryError> {
        let mut conn = self.conn();
        let lists: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(REGISTRY)
            .query_async(&mut conn)
            .await?;
        let mut restored = 0;
        for (list, queue) in lists {
            let Some(owner) = list
                .strip_prefix(PROCESSING_PREFIX)
                .and_then(|rest| rest.split_once(':'))
                .map(|(owner, _)| owner)
            else {
                continue;
            };
            if owner == self.instance {
                continue;
            }
            let alive: bool = redis::cmd("EXISTS")
                .arg(format!("{ALIVE_PREFIX}{owner}"))
                .query_async(&mut conn)
                .await?;
            if alive {
                continue;
            }
            let n = restore(&mut conn, &list, &queue).await?;
            if n > 0 {
                tracing::warn!(%queue, instance = owner, tasks = n, "put back the unacknowledged tasks of an instance that is gone");
            }
            restored += n;
            redis::cmd("EVAL")
                .arg(FORGET_EMPTY)
                .arg(2)
                .arg(&list)
                .arg(REGISTRY)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(restored)
    }

    /// A reader of `queue` on a connection of its own (a blocking read would hold up every
    /// other command on a shared one).
    pub(crate) async fn reader(&self, queue: &str) -> Result<Reader, CeleryError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(self.block + Duration::from_secs(5)));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Alive and its processing list listed before the first task is taken: an instance
        // that dies before its first heartbeat must not leave tasks no sweep can find.
        self.refresh(&[queue.to_owned()]).await?;
        let mut sources = vec![queue.to_owned()];
        sources.extend(
            PRIORITY_STEPS
                .iter()
                .map(|step| format!("{queue}{PRIORITY_SEPARATOR}{step}")),
        );
        Ok(Reader {
            conn,
            queue: queue.to_owned(),
            sources,
            processing: self.processing(queue),
            block: self.block,
        })
    }
}

/// Moves every entry of `list` to the taking end of `queue`, newest first so that the
/// oldest is taken first.
async fn restore(
    conn: &mut ConnectionManager,
    list: &str,
    queue: &str,
) -> Result<usize, CeleryError> {
    let mut moved = 0;
    loop {
        let entry: Option<Vec<u8>> = redis::cmd("LMOVE")
            .arg(list)
            .arg(queue)
            .arg("LEFT")
            .arg("RIGHT")
            .query_async(conn)
            .await?;
        if entry.is_none() {
            return Ok(moved);
        }
        moved += 1;
    }
}

/// kombu's envelope of a task on Redis.
fn envelope(queue: &str, task: &Task) -> Json {
    json!({
        "body": base64::engine::general_purpose::STANDARD.encode(&task.body),
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": task.headers,
        "properties": {
            "correlation_id": task.id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::now_v7().to_string(),
        },
    })
}

/// Reads an envelope as kombu wrote it.
pub(crate) fn parse_envelope(raw: &Bytes) -> Incoming {
    let envelope: Map<String, Json> = match serde_json::from_slice(raw) {
        Ok(envelope) => envelope,
        Err(error) => {
            return Incoming {
                body: raw.clone(),
                broken: Some(format!("the kombu envelope is not a JSON object: {error}")),
                ..Incoming::default()
            };
        }
    };
    let headers = match envelope.get("headers") {
        Some(Json::Object(headers)) => headers.clone(),
        _ => Map::new(),
    };
    let content_type = envelope
        .get("content-type")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let encoding = envelope
        .get("properties")
        .and_then(|p| p.get("body_encoding"))
        .and_then(Json::as_str);
    let body = envelope.get("body").and_then(Json::as_str).unwrap_or("");
    let (body, broken) = match encoding {
        Some("base64") => match base64::engine::general_purpose::STANDARD.decode(body) {
            Ok(body) => (Bytes::from(body), None),
            Err(error) => (
                Bytes::copy_from_slice(body.as_bytes()),
                Some(format!("the body is not base64 ({error})")),
            ),
        },
        None | Some("utf-8") => (Bytes::copy_from_slice(body.as_bytes()), None),
        Some(other) => (
            Bytes::copy_from_slice(body.as_bytes()),
            Some(format!("unknown body encoding `{other}`")),
        ),
    };
    Incoming {
        headers,
        content_type,
        body,
        broken,
    }
}

/// Takes tasks of one queue into the instance's processing list.
pub(crate) struct Reader {
    conn: MultiplexedConnection,
    queue: String,
    /// The queue, then its priority lists.
    sources: Vec<String>,
    processing: String,
    block: Duration,
}

impl Reader {
    /// Up to `max` tasks: what waits now, else what comes within the block time (possibly
    /// nothing).
    pub(crate) async fn fetch(&mut self, max: usize) -> Result<Vec<Bytes>, CeleryError> {
        let max = max.clamp(1, FETCH_MAX);
        let mut taken = Vec::new();
        for source in &self.sources {
            let want = max - taken.len();
            if want == 0 {
                break;
            }
            // One command finds an empty list (the usual case when idle); the rest of the
            // batch then comes in one pipeline.
            let first: Value = redis::cmd("LMOVE")
                .arg(source)
                .arg(&self.processing)
                .arg("RIGHT")
                .arg("LEFT")
                .query_async(&mut self.conn)
                .await?;
            let Some(first) = text(first) else {
                continue;
            };
            taken.push(first);
            if want > 1 {
                let mut pipe = redis::pipe();
                for _ in 1..want {
                    pipe.cmd("LMOVE")
                        .arg(source)
                        .arg(&self.processing)
                        .arg("RIGHT")
                        .arg("LEFT");
                }
                let replies: Vec<Value> = pipe.query_async(&mut self.conn).await?;
                taken.extend(replies.into_iter().filter_map(text));
            }
        }
        if !taken.is_empty() {
            return Ok(taken);
        }
        let reply: Value = redis::cmd("BLMOVE")
            .arg(&self.queue)
            .arg(&self.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(self.block.as_secs_f64())
            .query_async(&mut self.conn)
            .await?;
        Ok(text(reply).into_iter().collect())
    }
}

fn text(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(Bytes::from(bytes)),
        Value::SimpleString(text) => Some(Bytes::from(text)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_reads_back() {
        let task = Task {
            id: "abc".into(),
            headers: [("task".to_owned(), json!("tasks.add"))]
                .into_iter()
                .collect(),
            body: br#"[[1],{},{}]"#.to_vec(),
        };
        let envelope = envelope("celery", &task);
        assert_eq!(
            envelope["properties"]["delivery_info"]["routing_key"],
            "celery"
        );
        assert_eq!(envelope["properties"]["correlation_id"], "abc");
        let incoming = parse_envelope(&Bytes::from(envelope.to_string()));
        assert_eq!(incoming.broken, None);
        assert_eq!(&incoming.body[..], br#"[[1],{},{}]"#);
        assert_eq!(incoming.task(), Some("tasks.add"));
        assert_eq!(incoming.content_type.as_deref(), Some(CONTENT_TYPE));
        assert!(
            parse_envelope(&Bytes::from_static(b"nope"))
                .broken
                .is_some()
        );
    }
}
