//! Celery's AMQP transport (RabbitMQ), as Celery's default routing uses it: a task for
//! queue `q` is published to the default exchange with routing key `q`, after declaring
//! what a Celery worker declares for it: a durable direct exchange `q`, a durable queue `q`
//! and the binding `q` between them. Tasks are read with manual acknowledgements and a
//! prefetch; dead-letter records go to a durable queue named by their topic.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use lapin::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use messaging_core::config::mask_url;
use messaging_core::message::header;
use messaging_core::{Message, OutgoingMessage, Position};
use serde_json::{Map, Number, Value};

use crate::error::CeleryError;
use crate::protocol::{CONTENT_ENCODING, CONTENT_TYPE, Incoming, Task};
use crate::settings::URL_VARIABLE;

/// AMQP delivery mode of a message written to disk.
const PERSISTENT: u8 = 2;
/// The heartbeat asked for when the URL sets none: a broker that stops answering is
/// noticed in 20 s rather than RabbitMQ's two minutes.
const HEARTBEAT_SECS: u16 = 10;
/// How long the TCP connection and the AMQP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a Celery broker URL (`amqp://user:password@host:port/vhost`, kombu's form: an
/// empty path or `//` is the virtual host `/`) as lapin's URI. Errors name
/// `CELERY_BROKER_URL`, the password masked.
pub(crate) fn uri(url: &str) -> Result<AMQPUri, CeleryError> {
    let masked = mask_url(url);
    let invalid = |why: String| {
        CeleryError::config(
            URL_VARIABLE,
            format!("`{masked}` {why}; expected amqp://user:password@host:5672/vhost"),
        )
    };
    let Some((_, rest)) = url.split_once("://") else {
        return Err(invalid("is not a URL".to_owned()));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash + 1..]),
        None => (rest, ""),
    };
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err(invalid("names no host".to_owned()));
    }
    // kombu: `amqp://h//` and `amqp://h/` both mean the virtual host `/`.
    let vhost = match path {
        "" | "/" => "%2f",
        other => other,
    };
    let normalized = match query {
        Some(query) => format!("amqp://{authority}/{vhost}?{query}"),
        None => format!("amqp://{authority}/{vhost}"),
    };
    let mut uri: AMQPUri = normalized.parse().map_err(|error: String| {
        invalid(format!("does not parse: {}", error.replace(url, &masked)))
    })?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(HEARTBEAT_SECS);
    }
    Ok(uri)
}

async fn open(uri: &AMQPUri, name: String) -> Result<Connection, CeleryError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect_uri(uri.clone(), properties),
    )
    .await
    {
        Ok(connection) => Ok(connection?),
        Err(_) => Err(CeleryError::Closed),
    }
}

fn short(name: &str) -> Result<ShortString, CeleryError> {
    ShortString::try_new(name).map_err(|_| {
        CeleryError::config(
            crate::settings::TASKS_VARIABLE,
            format!("the queue or topic name `{name}` is longer than 255 bytes"),
        )
    })
}

/// Declares what a Celery worker declares for `queue`: the direct exchange, the queue and
/// its binding (kombu's `Queue(q, Exchange(q), routing_key=q)`, durable).
async fn declare_task_queue(channel: &Channel, queue: &str) -> Result<(), CeleryError> {
    let name = short(queue)?;
    channel
        .exchange_declare(
            name.clone(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    declare_queue(channel, queue).await?;
    channel
        .queue_bind(
            name.clone(),
            name.clone(),
            name,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

async fn declare_queue(channel: &Channel, queue: &str) -> Result<(), CeleryError> {
    channel
        .queue_declare(
            short(queue)?,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The AMQP side of one broker: a publishing connection with a confirm-mode channel.
pub(crate) struct AmqpTransport {
    uri: AMQPUri,
    name: String,
    session: Mutex<Option<Arc<Session>>>,
    /// Held while reconnecting, so that concurrent publishes wait for one attempt.
    reconnecting: tokio::sync::Mutex<()>,
}

struct Session {
    connection: Connection,
    channel: Channel,
    /// Queues declared on this connection.
    declared: Mutex<HashSet<String>>,
}

impl AmqpTransport {
    pub(crate) async fn connect(url: &str, source: &str) -> Result<Self, CeleryError> {
        let transport = Self {
            uri: uri(url)?,
            name: source.to_owned(),
            session: Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
        };
        transport.current().await?;
        Ok(transport)
    }

    fn connected(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|s| s.channel.status().connected())
            .cloned()
    }

    async fn current(&self) -> Result<Arc<Session>, CeleryError> {
        if let Some(session) = self.connected() {
            return Ok(session);
        }
        let _one = self.reconnecting.lock().await;
        if let Some(session) = self.connected() {
            return Ok(session);
        }
        let connection = open(&self.uri, format!("{} celery publisher", self.name)).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let session = Arc::new(Session {
            connection,
            channel,
            declared: Mutex::new(HashSet::new()),
        });
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Publishes persistently and waits for the confirm, declaring the queue first (once per
    /// connection); a publish lost with its connection is tried once more.
    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        properties: BasicProperties,
        task_queue: bool,
    ) -> Result<(), CeleryError> {
        let routing_key = short(queue)?;
        let mut retried = false;
        loop {
            let session = self.current().await?;
            let sent = async {
                let known = session
                    .declared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(queue);
                if !known {
                    if task_queue {
                        declare_task_queue(&session.channel, queue).await?;
                    } else {
                        declare_queue(&session.channel, queue).await?;
                    }
                    session
                        .declared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(queue.to_owned());
                }
                let confirm = session
                    .channel
                    .basic_publish(
                        ShortString::default(),
                        routing_key.clone(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        payload,
                        properties.clone(),
                    )
                    .await?;
                match confirm.await? {
                    Confirmation::Nack(_) => Err(CeleryError::Nacked),
                    Confirmation::Ack(Some(returned)) => Err(CeleryError::Unroutable {
                        queue: queue.to_owned(),
                        reason: format!("{} {}", returned.reply_code, returned.reply_text),
                    }),
                    Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                }
            };
            match sent.await {
                Err(CeleryError::Amqp(error))
                    if !retried && !session.channel.status().connected() =>
                {
                    tracing::debug!(%error, "publish lost with its connection; retrying on a new one");
                    retried = true;
                }
                Err(CeleryError::Unroutable { .. }) if !retried => {
                    // The queue was deleted since it was declared here: declare it again.
                    session
                        .declared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(queue);
                    retried = true;
                }
                result => return result,
            }
        }
    }

    /// Sends a task to `queue` through the default exchange.
    pub(crate) async fn publish_task(&self, queue: &str, task: &Task) -> Result<(), CeleryError> {
        let properties = BasicProperties::default()
            .with_content_type(CONTENT_TYPE.into())
            .with_content_encoding(CONTENT_ENCODING.into())
            .with_correlation_id(short(&task.id)?)
            .with_delivery_mode(PERSISTENT)
            .with_priority(0)
            .with_headers(to_table(&task.headers));
        self.publish(queue, &task.body, properties, true).await
    }

    /// Keeps a message that is not a task (a dead-letter record) in a durable queue named by
    /// its topic, its headers and key as string headers.
    pub(crate) async fn publish_plain(&self, message: &OutgoingMessage) -> Result<(), CeleryError> {
        let mut table = FieldTable::default();
        for (name, value) in &message.headers {
            table.insert(short(name)?, AMQPValue::LongString(LongString::from(value)));
        }
        if let Some(key) = &message.key {
            table.insert(
                short(header::KEY)?,
                AMQPValue::LongString(LongString::from(key.as_bytes())),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_headers(table);
        self.publish(&message.topic, &message.payload, properties, false)
            .await
    }

    /// Declares the queues of `topics` (dead-letter topics), so they keep their records.
    pub(crate) async fn declare(&self, topics: &[String]) -> Result<(), CeleryError> {
        let session = self.current().await?;
        for topic in topics {
            declare_queue(&session.channel, topic).await?;
            session
                .declared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.clone());
        }
        Ok(())
    }

    /// Up to `limit` messages of the queue `topic`, read with `basic.get` on a channel of
    /// their own and handed back unacknowledged by closing it.
    pub(crate) async fn browse(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<Message>, CeleryError> {
        let Some((channel, taken)) = self.take(topic, limit).await? else {
            return Ok(Vec::new());
        };
        if let Err(error) = channel.close(200, "browsed".into()).await {
            tracing::debug!(%error, "closing the browsing channel failed; its connection returns the messages");
        }
        Ok(taken.into_iter().map(|(message, _)| message).collect())
    }

    /// The messages waiting in the queue `topic` now (its message count bounds how many are
    /// taken, so what arrives meanwhile is left), at most `limit`, held unacknowledged on a
    /// channel of their own: `dlq replay`'s snapshot.
    pub(crate) async fn snapshot(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<AmqpSnapshot, CeleryError> {
        let (channel, taken) = match self.take(topic, limit).await? {
            Some(taken) => taken,
            None => return Ok(AmqpSnapshot::default()),
        };
        let (records, ackers) = taken.into_iter().unzip();
        Ok(AmqpSnapshot {
            channel: Some(channel),
            records,
            ackers,
        })
    }

    /// Takes up to `limit` of the messages waiting in the queue `topic` on a new channel,
    /// unacknowledged; `None` when the queue does not exist.
    async fn take(
        &self,
        topic: &str,
        limit: usize,
    ) -> Result<Option<(Channel, Vec<(Message, Acker)>)>, CeleryError> {
        let session = self.current().await?;
        let channel = session.connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let waiting = match channel
            .queue_declare(short(topic)?, passive, FieldTable::default())
            .await
        {
            Ok(queue) => usize::try_from(queue.message_count()).unwrap_or(usize::MAX),
            // NOT_FOUND closes the channel: never declared means nothing kept.
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let mut taken = Vec::new();
        while taken.len() < limit.min(waiting) {
            match channel
                .basic_get(short(topic)?, BasicGetOptions::default())
                .await?
            {
                Some(got) => {
                    let delivery = got.delivery;
                    let mut headers: messaging_core::Headers = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .map(|table| {
                            table
                                .inner()
                                .iter()
                                .map(|(name, value)| (name.to_string(), string_of(value)))
                                .collect()
                        })
                        .unwrap_or_default();
                    let key = headers.remove(header::KEY);
                    let mut message = Message::new(topic, delivery.data)
                        .with_headers(headers)
                        .with_position(Position::DeliveryTag(delivery.delivery_tag));
                    message.key = key.map(messaging_core::Key::from);
                    taken.push((message, delivery.acker));
                }
                None => break,
            }
        }
        Ok(Some((channel, taken)))
    }

    /// A reader of `queue` on a connection of its own, with `prefetch` unacknowledged
    /// deliveries at most.
    pub(crate) async fn reader(&self, queue: &str, prefetch: usize) -> Result<Reader, CeleryError> {
        let connection = open(&self.uri, format!("{} celery consumer {queue}", self.name)).await?;
        let channel = connection.create_channel().await?;
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        declare_task_queue(&channel, queue).await?;
        let consumer = channel
            .basic_consume(
                short(queue)?,
                ShortString::default(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Reader {
            connection,
            _channel: channel,
            consumer,
        })
    }
}

/// Dead-letter records taken for a replay, held on their channel until settled.
#[derive(Default)]
pub(crate) struct AmqpSnapshot {
    /// `None` when the queue does not exist.
    channel: Option<Channel>,
    pub(crate) records: Vec<Message>,
    /// One per record, same order.
    ackers: Vec<Acker>,
}

impl AmqpSnapshot {
    /// Removes the re-published records (acknowledged) and puts the others back where they
    /// were (rejected with requeue); a record never re-published is never deleted.
    pub(crate) async fn settle(mut self, replayed: &HashSet<usize>) -> Result<(), CeleryError> {
        let Some(channel) = self.channel.take() else {
            return Ok(());
        };
        for (index, acker) in self.ackers.iter().enumerate() {
            if replayed.contains(&index) {
                acker.ack(BasicAckOptions::default()).await?;
            } else {
                acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await?;
            }
        }
        // The broker answers the close after it has handled the acknowledgements.
        channel.close(200, "replay settled".into()).await?;
        Ok(())
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// One task delivered by RabbitMQ.
pub(crate) struct Delivery {
    pub incoming: Incoming,
    pub tag: u64,
    pub acker: Acker,
}

/// Deliveries of one queue.
pub(crate) struct Reader {
    connection: Connection,
    /// Kept open for the deliveries' acknowledgements.
    _channel: Channel,
    consumer: lapin::Consumer,
}

impl Reader {
    /// At least one delivery (waiting for it), and what else arrived, up to `max`.
    pub(crate) async fn fetch(&mut self, max: usize) -> Result<Vec<Delivery>, CeleryError> {
        let first = match self.consumer.next().await {
            Some(delivery) => delivery?,
            None => return Err(CeleryError::Closed),
        };
        let mut batch = vec![delivery(first)];
        while batch.len() < max.max(1) {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(next))) => batch.push(delivery(next)),
                _ => break,
            }
        }
        Ok(batch)
    }

    /// Closes the connection: what it held unacknowledged goes back to the queue.
    pub(crate) async fn close(self) {
        if let Err(error) = self.connection.close(200, "consumer closed".into()).await {
            tracing::debug!(%error, "closing a consumer connection failed");
        }
    }
}

fn delivery(delivery: lapin::message::Delivery) -> Delivery {
    let headers = delivery
        .properties
        .headers()
        .as_ref()
        .map(from_table)
        .unwrap_or_default();
    Delivery {
        incoming: Incoming {
            headers,
            content_type: delivery
                .properties
                .content_type()
                .as_ref()
                .map(|t| t.to_string()),
            body: delivery.data.into(),
            broken: None,
        },
        tag: delivery.delivery_tag,
        acker: delivery.acker,
    }
}

/// Task headers as an AMQP table, as py-amqp writes Python values: `None` as void, lists as
/// arrays, strings as long strings.
fn to_table(headers: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        if let Ok(name) = ShortString::try_new(name.as_str()) {
            table.insert(name, to_amqp(value));
        }
    }
    table
}

fn to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(to_amqp).collect::<Vec<_>>(),
        )),
        Value::Object(fields) => AMQPValue::FieldTable(to_table(fields)),
    }
}

fn from_table(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.to_string(), from_amqp(value)))
        .collect()
}

fn from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Void => Value::Null,
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(v) => Value::from(*v),
        AMQPValue::ShortShortUInt(v) => Value::from(*v),
        AMQPValue::ShortInt(v) => Value::from(*v),
        AMQPValue::ShortUInt(v) => Value::from(*v),
        AMQPValue::LongInt(v) => Value::from(*v),
        AMQPValue::LongUInt(v) => Value::from(*v),
        AMQPValue::LongLongInt(v) => Value::from(*v),
        AMQPValue::Timestamp(v) => Value::from(*v),
        AMQPValue::Float(v) => Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(v) => Number::from_f64(*v).map_or(Value::Null, Value::Number),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(from_table(table)),
        other => Value::String(string_of(other)),
    }
}

/// A header of any type as text (strings as they are).
fn string_of(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        AMQPValue::ShortString(v) => v.to_string(),
        AMQPValue::ByteArray(v) => String::from_utf8_lossy(v.as_slice()).into_owned(),
        AMQPValue::DecimalValue(v) => format!("{}e-{}", v.value, v.scale),
        other => from_amqp(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kombu_urls_name_the_default_virtual_host_with_an_empty_path() {
        for (url, vhost) in [
            ("amqp://guest:guest@localhost:5672//", "/"),
            ("amqp://guest:guest@localhost:5672/", "/"),
            ("amqp://guest:guest@localhost:5672", "/"),
            ("amqp://guest:guest@localhost:5672/%2f", "/"),
            ("amqp://u:p@h:5672/tests", "tests"),
        ] {
            let uri = uri(url).unwrap();
            assert_eq!(uri.vhost, vhost, "{url}");
            assert_eq!(uri.query.heartbeat, Some(HEARTBEAT_SECS));
        }
        let error = uri("amqp://u:secret@/x").unwrap_err().to_string();
        assert!(
            error.contains(URL_VARIABLE) && !error.contains("secret"),
            "{error}"
        );
    }

    #[test]
    fn headers_keep_their_types_through_a_table() {
        let headers = json!({"task": "t", "eta": null, "retries": 0, "timelimit": [null, null],
            "ignore_result": false, "stamps": {}, "x-event-name": "e"});
        let Value::Object(headers) = headers else {
            unreachable!()
        };
        assert_eq!(from_table(&to_table(&headers)), headers);
    }
}
