//! [`RedisIdempotencyStore`]: idempotency keys in Redis, shared by every instance of a
//! group. A key in progress is `SET key p:<owner> NX PX <lease>`; a key done is
//! `SET key d PX <ttl>`; a release deletes the key only while it still holds this owner's
//! value, and a renewal sets a new expiry only then (Lua scripts, so that the check and the
//! change are one step).

use std::sync::Arc;
use std::time::Duration;

use messaging_core::BoxFuture;
use messaging_core::idempotency::{
    Begin, IdempotencyError, IdempotencyStore, IdempotencyStoreFactory,
};
use redis::aio::ConnectionManager;

use crate::{RedisBroker, RedisOptions};

const STORE: &str = "redis";

/// The value of a key that is done.
const DONE: &str = "d";

/// Deletes `KEYS[1]` only while its value is `ARGV[1]`.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0";

/// Sets `KEYS[1]` to expire in `ARGV[2]` ms only while its value is `ARGV[1]`.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Idempotency keys in Redis (`MESSAGING_IDEMPOTENCY_STORE=redis`,
/// `MESSAGING_IDEMPOTENCY_URL=redis://…`).
#[derive(Clone)]
pub struct RedisIdempotencyStore {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIdempotencyStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisIdempotencyStore {
    /// Keys under `messaging:idempotency:` on this connection.
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: "messaging:idempotency:".to_owned(),
        }
    }

    /// Connects to `url`, read as `REDIS_URL` is (TLS, database, timeouts).
    pub async fn connect(url: &str) -> Result<Self, IdempotencyError> {
        let broker = RedisBroker::connect(url, RedisOptions::default())
            .await
            .map_err(|e| IdempotencyError::new(STORE, e))?;
        Ok(Self::new(broker.connection()))
    }

    /// Keys under `prefix` instead (tests, or services sharing one database).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn failed(e: redis::RedisError) -> IdempotencyError {
    IdempotencyError::new(STORE, e)
}

impl IdempotencyStore for RedisIdempotencyStore {
    fn name(&self) -> &'static str {
        STORE
    }

    fn try_begin<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, IdempotencyError>> {
        Box::pin(async move {
            let key = self.key(key);
            let mut conn = self.conn.clone();
            // The key may expire between the two commands: then try again.
            for _ in 0..3 {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(format!("p:{owner}"))
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease))
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                if set.is_some() {
                    return Ok(Begin::Begun);
                }
                let value: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                match value.as_deref() {
                    Some(DONE) => return Ok(Begin::Done),
                    Some(_) => return Ok(Begin::InProgress),
                    None => {}
                }
            }
            // Expiring as fast as it is taken: let the caller wait and check again.
            Ok(Begin::InProgress)
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        _owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(self.key(key))
                .arg(DONE)
                .arg("PX")
                .arg(millis(ttl))
                .query_async::<()>(&mut conn)
                .await
                .map_err(failed)
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(self.key(key))
                .arg(format!("p:{owner}"))
                .query_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(failed)
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("EVAL")
                .arg(RENEW)
                .arg(1)
                .arg(self.key(key))
                .arg(format!("p:{owner}"))
                .arg(millis(lease))
                .query_async::<i64>(&mut conn)
                .await
                .map(|renewed| renewed == 1)
                .map_err(failed)
        })
    }
}

inventory::submit! {
    IdempotencyStoreFactory {
        name: STORE,
        url_example: Some("redis://127.0.0.1:6379/0"),
        connect: |config| {
            // Never empty: core refuses a store with a `url_example` and no URL.
            let url = config.url.clone().unwrap_or_default();
            Box::pin(async move {
                let store = RedisIdempotencyStore::connect(&url).await?;
                Ok(Arc::new(store) as Arc<dyn IdempotencyStore>)
            })
        },
    }
}
