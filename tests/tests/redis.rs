//! The conformance suite on Redis Streams (127.0.0.1:6379; `scripts/start-redis.sh` starts it).
//! Fails, never skips, when Redis cannot be reached.
//!
//! Run with: cargo test -p messaging-tests --features redis --test redis

use messaging_redis::RedisBroker;
use messaging_tests::ConnectFuture;

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

messaging_tests::suite!(connect);
