//! Celery mode of `messaging`: events become Celery tasks that an unmodified Python Celery
//! worker runs, and tasks that Python code sends with `send_task`/`.delay()` reach the
//! framework's handlers. It speaks Celery's message protocol 2 with the JSON serializer over
//! Celery's two main transports, kombu's Redis transport and AMQP (RabbitMQ).
//!
//! Linking this crate registers the broker under the name `celery`: with
//! `MESSAGING_BACKEND=celery` every handler, `publish_event`, `send` and `#[event]` runs
//! unchanged. In code, [`CeleryBroker::connect`] with [`CeleryOptions`].
//!
//! # Configuration
//!
//! Read from the framework's `Config::settings` (the environment's `CELERY_` variables, or
//! `Config::setting` in code); core reads none of them.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CELERY_BROKER_URL` | the broker, as Celery's `broker_url`; its scheme picks the transport: `redis://[:password@]host[:port][/db]` or `amqp://user:password@host[:port]/vhost` (kombu's form: `//` or an empty path is the virtual host `/`) | `amqp://guest:guest@localhost:5672//` (Celery's) |
//! | `CELERY_TASKS` | which task each topic or event name is: entries `key=task` or `key=task@queue`, separated by commas or new lines, e.g. `user.mood.created=vectosvc.worker.tasks.process_mood_created,order.paid=billing.tasks.charge@billing` | none |
//! | `CELERY_DEFAULT_QUEUE` | the queue of entries that name none | `celery` (Celery's `task_default_queue`) |
//!
//! A `CELERY_TASKS` that does not parse (an entry without `=`, an empty part, a key mapped
//! twice), a URL of another scheme, and any of them set but empty are configuration errors
//! naming the variable: `consumer check` reports them and the runtime stops at once.
//!
//! # Publishing
//!
//! A message is sent as the task of its **event name**'s entry (the `x-event-name` header,
//! set by `publish_event`, `#[event]` and typed publishing), else of its **topic**'s entry;
//! a message whose topic and event name are both unmapped fails with an error that says
//! which entry to add (a dead-letter topic excepted, see below). The task's one positional
//! argument is the event's data: the envelope's `data` for an enveloped message, the whole
//! body for `send` (which must be JSON). No keyword arguments are sent, so the Python task
//! can be a plain `def process(data)`.
//!
//! **Where the envelope goes.** The envelope's other fields, the message key and every
//! header travel as custom task headers, which the Python task reads with
//! `@app.task(bind=True)` as `self.request.headers` (Celery 5.3 and later):
//!
//! | task header | from |
//! |---|---|
//! | `id` (Celery's task id, also `root_id` and the `correlation_id`) | the envelope's `id` (a new UUID for `send`) |
//! | `x-event-name` | the envelope's `name` |
//! | `x-event-id` | the envelope's `id` |
//! | `x-event-source` | the envelope's `source` (`MESSAGING_SOURCE`) |
//! | `x-event-timestamp` | the envelope's `timestamp` (RFC 3339) |
//! | `x-trace-id` | the envelope's `trace_id`, when it has one |
//! | `x-message-key` | the message key, when it has one |
//! | any other header (`traceparent`, `x-idempotency-key` …) | as it is (text; bytes that are not UTF-8 are replaced) |
//!
//! The rest is what Celery 5 itself writes: `lang` (`rust`), `task`, `shadow`, `eta`,
//! `expires`, `group`, `group_index` (null), `retries` (0), `timelimit` (`[null, null]`),
//! `parent_id` (null), `argsrepr` (Python's repr of the arguments), `kwargsrepr` (`{}`),
//! `origin` (the service name), `ignore_result` (false), `replaced_task_nesting` (0),
//! `stamped_headers` (null), `stamps` (`{}`); the body is
//! `[[data], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`. A
//! header named like one of Celery's is refused.
//!
//! - **Redis**: kombu's envelope `{"body": <base64 of the body>, "content-encoding":
//!   "utf-8", "content-type": "application/json", "headers": {…}, "properties":
//!   {"correlation_id", "reply_to": "", "delivery_mode": 2, "delivery_info": {"exchange":
//!   "", "routing_key": <queue>}, "priority": 0, "body_encoding": "base64", "delivery_tag":
//!   <uuid>}}`, `LPUSH`ed onto the list named by the queue, as kombu does for priority 0.
//! - **AMQP**: Celery's default routing: the body published to the default exchange with
//!   the queue as routing key, persistent, `content_type` `application/json`,
//!   `content_encoding` `utf-8`, `correlation_id` the task id, the headers as the AMQP
//!   headers table (null as void, lists as arrays), with a publisher confirm; the queue is
//!   declared first as a Celery worker declares it (a durable direct exchange and a durable
//!   queue of its name, bound by it). A publish no queue takes fails.
//!
//! # Consuming
//!
//! A handler's topic must have an entry (else `subscribe` fails with a configuration error
//! naming `CELERY_TASKS`); the handler receives the tasks of that entry's task name from its
//! queue, as messages on its topic:
//!
//! - the **body** is the task's argument as JSON: its one positional argument; with none,
//!   its keyword arguments as an object; with several, the list of them (keyword arguments
//!   besides one positional argument are in the header `x-celery-kwargs`). A task that
//!   carries an `x-event-name` header (every task this crate publishes from an event, or a
//!   Python one sent with `headers={"x-event-name": …}`) is delivered as the event
//!   envelope again (`data` the argument, the other fields from the headers above, the task
//!   id as `id` when there is no `x-event-id`), so `Event<T>` handlers read what
//!   `publish_event` sent, as on every backend;
//! - the **headers** are the task's custom headers, plus `x-celery-task` (the task name)
//!   and `x-celery-task-id`; `x-message-key` becomes the message key.
//!
//! Acknowledgement is late and the framework's: a task is acknowledged on the broker only
//! once the runtime acknowledges it (the handler succeeded, or its dead-letter record was
//! written), retries are the runtime's (in-process, with the declared back-off; Celery's
//! `retries`, `eta`, `expires` and time limits are not applied), and so is the DLQ.
//!
//! - **Redis**: a task is taken atomically (`LMOVE`, `BLMOVE` when the queue is empty;
//!   kombu's priority lists `queue\x06\x163/6/9` after the queue itself) into a processing
//!   list of this instance, `_messaging.celery.unacked:<instance>:<queue>`, and removed
//!   from it (`LREM`) when acknowledged. Each instance keeps a liveness key
//!   (`_messaging.celery.alive:<instance>`, 10 s, refreshed every 2.5 s) and lists its
//!   processing lists in the hash `_messaging.celery.unacked`; at start and every 5 s each
//!   instance puts the tasks of instances whose key expired (crashed) back at the taking end
//!   of their queue, oldest first. A clean close puts back what was not acknowledged at
//!   once. This is chosen over kombu's `unacked` hash, whose tasks kombu restores after its
//!   visibility timeout (an hour by default) even from a live worker still retrying them:
//!   here a crashed instance's tasks come back within seconds, and a live one keeps its
//!   tasks however long its back-off.
//! - **AMQP**: a consumer of the queue with manual acknowledgements and `basic.qos` prefetch
//!   set to the subscription's prefetch; what is not acknowledged when the connection goes
//!   (a crash, a lost link) is redelivered by RabbitMQ. RabbitMQ takes back a delivery held
//!   longer than its `consumer_timeout` (30 minutes by default), so handlers whose retries
//!   could hold one that long are refused at start-up, as on the `rabbitmq` backend.
//!
//! One reader per queue serves every subscription of the process, routing each task by its
//! name. A task mapped by two subscriptions (two groups handling one topic) goes to both and
//! is acknowledged when both acknowledged it; a subscription that closes with a task unacknowledged
//! puts the task back whole. A task whose name no handler here maps is acknowledged and
//! counted as the runtime counts an unknown topic (a Celery worker drops a task it has not
//! registered): the processes that read a queue should handle every task sent to it, so
//! give tasks handled elsewhere a queue of their own (`key=task@queue`). Across processes, a
//! task goes to one of them, as Celery's queues do.
//!
//! **A task that cannot be decoded** (a kombu envelope that is not JSON, another serializer
//! or compression, protocol 1, a body that is not `[args, kwargs, embed]`) is handed to the
//! handler of its task, or of the queue's first topic when its name is unknown, with its raw
//! body as the payload and the reason in the header `x-celery-decode-error`: the handler's
//! decoder fails, and the runtime dead-letters it with that header in the record (a
//! handler that takes raw bytes, or any JSON value, accepts what decodes as such).
//!
//! # Dead letters
//!
//! A message for a topic no entry maps that is a dead-letter topic (one the runtime
//! declared at start-up, or any name ending in `.dlq`) is kept rather than sent as a task:
//! on Redis `RPUSH`ed onto a plain list named by the topic (the record's body only: a record
//! carries its key and headers), on AMQP published to a durable queue of that name.
//! `consumer dlq list` reads them (`LRANGE`; on AMQP `basic.get` on a channel closed
//! unacknowledged, which puts them back). `consumer dlq replay` takes the records waiting
//! when it starts (Redis: the list's first entries, the re-published ones then removed with
//! `LREM`; AMQP: taken with `basic.get` and held, the re-published ones acknowledged and the
//! others put back) and re-sends each record's original as a task again.
//!
//! # Not supported
//!
//! Request-reply (`request`), retry topics (`retry_topics`), result backends (no result is
//! read or written), other serializers than JSON, TLS (`rediss://`, `amqps://`), Redis
//! Sentinel and Cluster, kombu's `global_keyprefix`, and AMQP priorities.
//!
//! ```no_run
//! # async fn demo() -> Result<(), messaging_core::BrokerError> {
//! use messaging_celery::{CeleryBroker, CeleryOptions};
//! let options = CeleryOptions::new("redis://127.0.0.1:6379/0")
//!     .route("user.mood.created", "vectosvc.worker.tasks.process_mood_created", "celery");
//! let broker = CeleryBroker::connect(options).await?;
//! let runtime = messaging_core::Runtime::builder().broker(broker.into_dyn());
//! # let _ = runtime; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod amqp_transport;
mod broker;
mod consumer;
mod error;
mod protocol;
mod redis_transport;
mod settings;

use std::sync::Arc;

use messaging_core::config::mask_url;
use messaging_core::{BoxFuture, Broker, BrokerError, BrokerFactory, Config};

pub use broker::CeleryBroker;
pub use error::{CeleryError, NAME};
pub use protocol::{
    CELERY_KWARGS, CELERY_TASK, CELERY_TASK_ID, DECODE_ERROR, EVENT_SOURCE, EVENT_TIMESTAMP,
};
pub use settings::{
    CeleryOptions, DEFAULT_QUEUE, DEFAULT_URL, QUEUE_VARIABLE, TASKS_VARIABLE, TaskRoute,
    Transport, URL_VARIABLE,
};

fn connect(config: &Config) -> BoxFuture<'_, Result<Arc<dyn Broker>, BrokerError>> {
    Box::pin(async move {
        let options = CeleryOptions::from_config(config)?;
        Ok(CeleryBroker::connect(options).await?.into_dyn())
    })
}

/// What the connection loop names as the server: the URL, its password masked.
fn target(config: &Config) -> String {
    mask_url(&settings::configured_url(config).unwrap_or_default())
}

/// The settings a connection would refuse before any attempt: the URL, `CELERY_TASKS` and
/// `CELERY_DEFAULT_QUEUE`, read without connecting.
fn check(config: &Config) -> Result<(), BrokerError> {
    let options = CeleryOptions::from_config(config)?;
    match options.transport()? {
        Transport::Redis => redis_transport::RedisTransport::client(&options.url)
            .map(drop)
            .map_err(|e| e.into_broker("check")),
        Transport::Amqp => amqp_transport::uri(&options.url)
            .map(drop)
            .map_err(|e| e.into_broker("check")),
    }
}

inventory::submit! {
    BrokerFactory::new(NAME, connect)
        .variables(&["CELERY_"])
        .target(target)
        .check(check)
        .topic_note(settings::describe_topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reads_every_variable_without_connecting() {
        let config = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .fold(Config::default(), |c, (k, v)| c.setting(*k, *v))
        };
        assert!(check(&config(&[])).is_ok());
        assert!(check(&config(&[(URL_VARIABLE, "redis://:pw@127.0.0.1:6379/4")])).is_ok());
        assert!(check(&config(&[(URL_VARIABLE, "redis://127.0.0.1:99999999/x")])).is_err());
        assert!(check(&config(&[(TASKS_VARIABLE, "a=b=c")])).is_err());
        assert_eq!(
            target(&config(&[(URL_VARIABLE, "redis://:pw@h:6379/4")])),
            "redis://:***@h:6379/4"
        );
    }
}
