//! Hostile input on Kafka, produced with `rdkafka`'s own `FutureProducer` (not through our
//! producer): key, payload and headers as raw bytes, each send awaiting its delivery report.
//! Fails, never skips, when the broker cannot be reached.
//!
//! The raw producer raises librdkafka's `message.max.bytes` (about 1 MB by default) so that
//! it can send the 10 MB body of the `too_large` case, as on the other brokers; the test
//! broker takes it, and the consumer reads it whatever its fetch sizes say (a record larger
//! than `max.partition.fetch.bytes` is still returned).
//!
//! Run with: cargo test -p messaging-tests --features kafka --test hostile_kafka

use std::time::Duration;

use messaging_core::BoxFuture;
use messaging_kafka::KafkaBroker;
use messaging_tests::{ConnectFuture, Limits, RawMessage, RawSend};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const BOOTSTRAP: &str = "127.0.0.1:9092";

const LIMITS: Limits = Limits::TEN_MEGABYTES;

fn connect() -> ConnectFuture {
    Box::pin(async {
        let properties = [
            ("session.timeout.ms", "6000"),
            ("messaging.topic.replication.factor", "1"),
        ];
        match KafkaBroker::connect_with_properties(BOOTSTRAP, properties).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => panic!(
                "Kafka is not reachable at {BOOTSTRAP} (run scripts/start-kafka.sh): {error}"
            ),
        }
    })
}

struct Produce(FutureProducer);

impl RawSend for Produce {
    fn send(&self, message: RawMessage) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let headers =
                message
                    .headers
                    .iter()
                    .fold(OwnedHeaders::new(), |headers, (name, value)| {
                        headers.insert(Header {
                            key: name.as_str(),
                            value: Some(value.as_slice()),
                        })
                    });
            let mut record = FutureRecord::to(&message.topic)
                .payload(&message.payload)
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_slice());
            }
            if let Err((error, _)) = self.0.send(record, Duration::from_secs(30)).await {
                panic!("producing to {} failed: {error}", message.topic);
            }
        })
    }
}

fn raw_sender() -> BoxFuture<'static, Box<dyn RawSend>> {
    Box::pin(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", BOOTSTRAP)
            .set("message.timeout.ms", "30000")
            .set("message.max.bytes", "16777216")
            .create()
            .unwrap_or_else(|e| panic!("a Kafka producer for {BOOTSTRAP}: {e}"));
        Box::new(Produce(producer)) as Box<dyn RawSend>
    })
}

messaging_tests::hostile_suite!(connect, raw_sender, LIMITS);
