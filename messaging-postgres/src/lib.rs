//! A PostgreSQL idempotency store for messaging: idempotent handlers keep their keys in one
//! table, shared by every instance, for teams whose handlers write to the same database.
//!
//! Link this crate and set `MESSAGING_IDEMPOTENCY_STORE=postgres` and
//! `MESSAGING_IDEMPOTENCY_URL=postgres://user@host/db`; the table
//! (`messaging_idempotency`) is created when missing.
//!
//! One row per key: `owner` and `lease_until` while a delivery holds it, `done_until` once it
//! is done. Taking a key is one statement (`INSERT … ON CONFLICT (key) DO UPDATE … WHERE` the
//! row's lease or TTL ran out), so two instances never both take it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use messaging_core::BoxFuture;
use messaging_core::idempotency::{
    Begin, IdempotencyError, IdempotencyStore, IdempotencyStoreFactory,
};
use tokio_postgres::{Client, NoTls};

const STORE: &str = "postgres";

/// The default table.
pub const TABLE: &str = "messaging_idempotency";

/// Every this many completions, rows whose TTL ran out are deleted.
const PURGE_EVERY: u64 = 1_000;

/// Idempotency keys in a PostgreSQL table.
pub struct PostgresIdempotencyStore {
    client: Client,
    table: String,
    completions: AtomicU64,
}

impl std::fmt::Debug for PostgresIdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresIdempotencyStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn failed(e: tokio_postgres::Error) -> IdempotencyError {
    IdempotencyError::new(STORE, e)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl PostgresIdempotencyStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`, no TLS) and
    /// creates the table [`TABLE`] when missing.
    pub async fn connect(url: &str) -> Result<Self, IdempotencyError> {
        Self::connect_with_table(url, TABLE).await
    }

    /// [`PostgresIdempotencyStore::connect`] with another table (letters, digits and `_`).
    pub async fn connect_with_table(url: &str, table: &str) -> Result<Self, IdempotencyError> {
        let valid = !table.is_empty()
            && table.len() <= 63
            && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !table.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(IdempotencyError::new(
                STORE,
                format!("`{table}` is not a table name: use letters, digits and `_`"),
            ));
        }
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(failed)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the idempotency store's PostgreSQL connection ended");
            }
        });
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    key text PRIMARY KEY,
                    owner text,
                    lease_until timestamptz,
                    done_until timestamptz
                )"
            ))
            .await
            .map_err(failed)?;
        Ok(Self {
            client,
            table: table.to_owned(),
            completions: AtomicU64::new(0),
        })
    }
}

impl IdempotencyStore for PostgresIdempotencyStore {
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
            let t = &self.table;
            // Taken when absent, or when its TTL (done) or lease (in progress) ran out.
            let take = format!(
                "INSERT INTO {t} AS row (key, owner, lease_until, done_until)
                 VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond', NULL)
                 ON CONFLICT (key) DO UPDATE
                   SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until,
                       done_until = NULL
                   WHERE (row.done_until IS NOT NULL AND row.done_until <= now())
                      OR (row.done_until IS NULL AND row.lease_until <= now())
                 RETURNING key"
            );
            let look = format!(
                "SELECT coalesce(done_until > now(), false), coalesce(lease_until > now(), false)
                 FROM {t} WHERE key = $1"
            );
            // The row may expire (or go) between the two statements: then take it again.
            for _ in 0..3 {
                let taken = self
                    .client
                    .query_opt(&take, &[&key, &owner, &millis(lease)])
                    .await
                    .map_err(failed)?;
                if taken.is_some() {
                    return Ok(Begin::Begun);
                }
                let state = self
                    .client
                    .query_opt(&look, &[&key])
                    .await
                    .map_err(failed)?
                    .map(|row| (row.get::<_, bool>(0), row.get::<_, bool>(1)));
                match state {
                    Some((true, _)) => return Ok(Begin::Done),
                    Some((false, true)) => return Ok(Begin::InProgress),
                    _ => {}
                }
            }
            // Expiring as fast as it is taken: let the caller wait and check again.
            Ok(Begin::InProgress)
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        Box::pin(async move {
            let t = &self.table;
            self.client
                .execute(
                    &format!(
                        "INSERT INTO {t} (key, owner, lease_until, done_until)
                         VALUES ($1, $2, NULL, now() + $3::bigint * interval '1 millisecond')
                         ON CONFLICT (key) DO UPDATE
                           SET owner = EXCLUDED.owner, lease_until = NULL,
                               done_until = EXCLUDED.done_until"
                    ),
                    &[&key, &owner, &millis(ttl)],
                )
                .await
                .map_err(failed)?;
            if self.completions.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1 {
                self.client
                    .execute(&format!("DELETE FROM {t} WHERE done_until < now()"), &[])
                    .await
                    .map_err(failed)?;
            }
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        Box::pin(async move {
            let t = &self.table;
            self.client
                .execute(
                    &format!(
                        "DELETE FROM {t} WHERE key = $1 AND owner = $2 AND done_until IS NULL"
                    ),
                    &[&key, &owner],
                )
                .await
                .map(drop)
                .map_err(failed)
        })
    }
}

inventory::submit! {
    IdempotencyStoreFactory {
        name: STORE,
        connect: |config| {
            let url = config.url.clone();
            Box::pin(async move {
                let url = url.ok_or_else(|| {
                    IdempotencyError::new(
                        STORE,
                        "set MESSAGING_IDEMPOTENCY_URL to the database URL, e.g. \
                         postgres://postgres@127.0.0.1:5432/app",
                    )
                })?;
                let store = PostgresIdempotencyStore::connect(&url).await?;
                Ok(Arc::new(store) as Arc<dyn IdempotencyStore>)
            })
        },
    }
}
