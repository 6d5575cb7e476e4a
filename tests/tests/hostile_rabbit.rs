//! Hostile input on RabbitMQ, published with `lapin`'s own `basic_publish` (not through our
//! producer) on the `messaging` topic exchange with the topic as routing key, with publisher
//! confirms; the key as the `x-message-key` header, header values as AMQP long strings of raw
//! bytes. Fails, never skips, when RabbitMQ cannot be reached.
//!
//! Run with: cargo test -p messaging-tests --features rabbitmq --test hostile_rabbit

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use messaging_core::BoxFuture;
use messaging_rabbit::{RabbitBroker, RabbitOptions};
use messaging_tests::{ConnectFuture, Limits, RawMessage, RawSend};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn connect() -> ConnectFuture {
    Box::pin(async {
        let options = RabbitOptions::new(URL)
            .connection_name("messaging-tests hostile")
            .queue_expires(Duration::from_secs(300));
        match RabbitBroker::connect(options).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => panic!(
                "RabbitMQ is not reachable at {URL} (run scripts/start-rabbitmq.sh): {error}"
            ),
        }
    })
}

/// The channel, and its connection kept open with it.
struct Publish(Channel, #[allow(dead_code)] Connection);

impl RawSend for Publish {
    fn send(&self, message: RawMessage) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut headers = FieldTable::default();
            if let Some(key) = &message.key {
                headers.insert(
                    "x-message-key".into(),
                    AMQPValue::LongString(LongString::from(key.as_slice())),
                );
            }
            for (name, value) in &message.headers {
                headers.insert(
                    name.as_str().into(),
                    AMQPValue::LongString(LongString::from(value.as_slice())),
                );
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers);
            let confirm = self
                .0
                .basic_publish(
                    "messaging".into(),
                    message.topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &message.payload,
                    properties,
                )
                .await
                .unwrap_or_else(|e| panic!("basic.publish to {} failed: {e}", message.topic));
            let confirmation = confirm.await.expect("a publisher confirm");
            assert!(confirmation.is_ack(), "RabbitMQ refused the message");
        })
    }
}

fn raw_sender() -> BoxFuture<'static, Box<dyn RawSend>> {
    Box::pin(async {
        let connection = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {URL}: {e}"));
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("publisher confirms");
        Box::new(Publish(channel, connection)) as Box<dyn RawSend>
    })
}

messaging_tests::hostile_suite!(connect, raw_sender, Limits::TEN_MEGABYTES);
