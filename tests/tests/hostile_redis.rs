//! Hostile input on Redis Streams, written with the `redis` crate's own `XADD` (not through
//! our producer), in the entry layout of `messaging-redis`: a `payload` field, the key as
//! `x-message-key`, one field per header, values as raw bytes. Fails, never skips, when
//! Redis cannot be reached.
//!
//! Run with: cargo test -p messaging-tests --features redis --test hostile_redis

use messaging_core::BoxFuture;
use messaging_redis::RedisBroker;
use messaging_tests::{ConnectFuture, Limits, RawMessage, RawSend};
use redis::aio::MultiplexedConnection;

const URL: &str = "redis://127.0.0.1:6379/0";

fn connect() -> ConnectFuture {
    Box::pin(async {
        match RedisBroker::connect_url(URL).await {
            Ok(broker) => broker.into_dyn(),
            Err(error) => {
                panic!("Redis is not reachable at {URL} (run scripts/start-redis.sh): {error}")
            }
        }
    })
}

struct Xadd(MultiplexedConnection);

impl RawSend for Xadd {
    fn send(&self, message: RawMessage) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&message.topic)
                .arg("*")
                .arg("payload")
                .arg(&message.payload);
            if let Some(key) = &message.key {
                cmd.arg("x-message-key").arg(key);
            }
            for (name, value) in &message.headers {
                cmd.arg(name).arg(value);
            }
            let mut connection = self.0.clone();
            let id: String = cmd
                .query_async(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("XADD to {} failed: {e}", message.topic));
            assert!(!id.is_empty());
        })
    }
}

fn raw_sender() -> BoxFuture<'static, Box<dyn RawSend>> {
    Box::pin(async {
        let client = redis::Client::open(URL).expect("a valid Redis URL");
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis is not reachable at {URL}: {e}"));
        Box::new(Xadd(connection)) as Box<dyn RawSend>
    })
}

messaging_tests::hostile_suite!(connect, raw_sender, Limits::TEN_MEGABYTES);
