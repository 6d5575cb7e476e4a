//! Names and declarations (DESIGN §4): one durable topic exchange; per group a durable queue
//! bound to each of its topics; per kept topic (dead-letter topics) a durable queue bound to
//! it alone, so records stay even with no consumer.
//!
//! A topic is bound literally as a routing key. On a topic exchange `.` separates words and
//! the words `*` and `#` are wildcards, so a topic containing `*` or `#` would match other
//! topics too: such topics are refused rather than silently widened.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use messaging_core::{BindingOf, Config};
use serde_json::{Value, json};

use crate::connection::amqp_uri;
use crate::error::RabbitError;
use crate::options::RabbitOptions;

/// The routing key of `topic`, checked to match exactly itself.
pub(crate) fn routing_key(topic: &str) -> Result<ShortString, RabbitError> {
    let invalid = |reason| RabbitError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    if topic.is_empty() {
        return Err(invalid("a topic cannot be empty"));
    }
    if topic.contains(['*', '#']) {
        return Err(invalid(
            "`*` and `#` are wildcards on a RabbitMQ topic exchange; a topic containing them would receive other topics' messages",
        ));
    }
    ShortString::try_new(topic).map_err(|_| invalid("longer than 255 bytes"))
}

fn short_name(what: &'static str, name: String) -> Result<ShortString, RabbitError> {
    ShortString::try_new(name.clone()).map_err(|_| RabbitError::InvalidName {
        what,
        name,
        reason: "longer than 255 bytes",
    })
}

/// The exchange name, checked.
pub(crate) fn exchange(name: &str) -> Result<ShortString, RabbitError> {
    let invalid = |reason| RabbitError::InvalidName {
        what: "exchange",
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid(
            "the default exchange cannot hold bindings; name a topic exchange",
        ));
    }
    if name.starts_with("amq.") {
        return Err(invalid(
            "names starting with `amq.` are reserved by RabbitMQ",
        ));
    }
    short_name("exchange", name.to_owned())
}

/// The queue of `group`: `<exchange>.group.<group>`. Scoped by exchange so two exchanges on
/// one virtual host never share a group's messages, and by `group.` so a group never meets a
/// kept topic's queue.
pub(crate) fn group_queue(exchange: &str, group: &str) -> Result<ShortString, RabbitError> {
    if group.is_empty() {
        return Err(RabbitError::InvalidName {
            what: "group",
            name: String::new(),
            reason: "a group cannot be empty",
        });
    }
    short_name("queue", format!("{exchange}.group.{group}"))
}

/// The queue that keeps `topic` (declared by `declare_topics`): `<exchange>.topic.<topic>`.
pub(crate) fn topic_queue(exchange: &str, topic: &str) -> Result<ShortString, RabbitError> {
    short_name("queue", format!("{exchange}.topic.{topic}"))
}

/// What the AsyncAPI document (`consumer asyncapi`) says of this topology
/// (`BrokerFactory::bindings`): a topic is a routing key on the durable topic exchange; a
/// group reads from its durable queue (`x-queue` of the receive operation, as AMQP bindings
/// have no field for it) and acknowledges; a kept topic has a queue of its own; publishes are
/// persistent and mandatory.
pub(crate) fn asyncapi_bindings(config: &Config, of: BindingOf<'_>) -> Option<Value> {
    let options = RabbitOptions::from_config(config).ok()?;
    let exchange = options.exchange_name();
    let vhost = amqp_uri(&options.url).map_or_else(|_| "/".to_owned(), |uri| uri.vhost);
    let queue = |name: String| json!({"name": name, "durable": true, "exclusive": false, "autoDelete": false, "vhost": vhost});
    let amqp = match of {
        BindingOf::Channel { topic, kept } => {
            let mut channel = json!({
                "is": "routingKey",
                "exchange": {"name": exchange, "type": "topic", "durable": true, "autoDelete": false, "vhost": vhost},
            });
            if kept {
                channel["x-queue"] = queue(format!("{exchange}.topic.{topic}"));
            }
            channel
        }
        BindingOf::Receive { group, .. } => {
            json!({"ack": true, "x-queue": queue(format!("{exchange}.group.{group}"))})
        }
        BindingOf::Send { .. } => json!({"deliveryMode": 2, "mandatory": true}),
        _ => return None,
    };
    let mut amqp = amqp;
    amqp["bindingVersion"] = json!(ASYNCAPI_AMQP_BINDINGS);
    Some(json!({ "amqp": amqp }))
}

/// The version of the AsyncAPI AMQP bindings written.
const ASYNCAPI_AMQP_BINDINGS: &str = "0.3.0";

/// Declares the durable topic exchange (idempotent).
pub(crate) async fn declare_exchange(
    channel: &Channel,
    exchange: &ShortString,
) -> Result<(), RabbitError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares a durable queue bound to each routing key (idempotent).
pub(crate) async fn declare_bound_queue(
    channel: &Channel,
    exchange: &ShortString,
    queue: &ShortString,
    routing_keys: &[ShortString],
    expires: Option<Duration>,
) -> Result<(), RabbitError> {
    let mut arguments = FieldTable::default();
    if let Some(after) = expires {
        let millis = u32::try_from(after.as_millis()).unwrap_or(u32::MAX).max(1);
        arguments.insert("x-expires".into(), AMQPValue::LongUInt(millis));
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.clone(), options, arguments)
        .await?;
    for key in routing_keys {
        channel
            .queue_bind(
                queue.clone(),
                exchange.clone(),
                key.clone(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_topics_are_routing_keys() {
        assert_eq!(
            routing_key("orders.created").unwrap().as_str(),
            "orders.created"
        );
        assert_eq!(
            routing_key("orders.created.dlq").unwrap().as_str(),
            "orders.created.dlq"
        );
    }

    #[test]
    fn wildcards_and_oversized_topics_are_refused() {
        for topic in ["orders.*", "#", "a.#.b", "a*b", ""] {
            let error = routing_key(topic).unwrap_err();
            assert!(
                matches!(error, RabbitError::InvalidTopic { .. }),
                "{topic}: {error}"
            );
        }
        let error = routing_key(&"x".repeat(256)).unwrap_err();
        assert!(error.to_string().contains("255"), "{error}");
        assert!(routing_key(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn queue_names_are_scoped_and_bounded() {
        assert_eq!(
            group_queue("messaging", "billing").unwrap().as_str(),
            "messaging.group.billing"
        );
        assert_eq!(
            topic_queue("messaging", "orders.created.dlq")
                .unwrap()
                .as_str(),
            "messaging.topic.orders.created.dlq"
        );
        assert!(group_queue("messaging", "").is_err());
        assert!(group_queue("messaging", &"g".repeat(250)).is_err());
    }

    #[test]
    fn asyncapi_bindings_name_the_exchange_and_the_queues() {
        let config = Config::default()
            .setting("RABBITMQ_URL", "amqp://u:secret@localhost:5672/orders")
            .setting("RABBITMQ_EXCHANGE", "events");
        let channel = BindingOf::Channel {
            topic: "orders.created",
            kept: false,
        };
        let amqp = &asyncapi_bindings(&config, channel).unwrap()["amqp"];
        assert_eq!(amqp["is"], "routingKey");
        assert_eq!(amqp["exchange"]["name"], "events");
        assert_eq!(amqp["exchange"]["type"], "topic");
        assert_eq!(amqp["exchange"]["vhost"], "orders");
        assert!(amqp.get("x-queue").is_none());
        let dlq = BindingOf::Channel {
            topic: "orders.created.dlq",
            kept: true,
        };
        let amqp = &asyncapi_bindings(&config, dlq).unwrap()["amqp"];
        assert_eq!(amqp["x-queue"]["name"], "events.topic.orders.created.dlq");
        let receive = BindingOf::Receive {
            topic: "orders.created",
            group: "payments",
        };
        let amqp = &asyncapi_bindings(&config, receive).unwrap()["amqp"];
        assert_eq!(amqp["x-queue"]["name"], "events.group.payments");
        assert_eq!(amqp["ack"], true);
        assert_eq!(amqp["bindingVersion"], "0.3.0");
        let send = BindingOf::Send {
            topic: "orders.created",
        };
        assert_eq!(
            asyncapi_bindings(&config, send).unwrap()["amqp"]["mandatory"],
            true
        );
        assert_eq!(asyncapi_bindings(&config, BindingOf::Server), None);
        // The default vhost, `/`.
        let amqp = &asyncapi_bindings(&Config::default(), channel).unwrap()["amqp"];
        assert_eq!(amqp["exchange"]["vhost"], "/");
        assert_eq!(amqp["exchange"]["name"], "messaging");
    }

    #[test]
    fn reserved_and_default_exchanges_are_refused() {
        assert!(exchange("").is_err());
        assert!(exchange("amq.topic").is_err());
        assert_eq!(exchange("events").unwrap().as_str(), "events");
    }
}
