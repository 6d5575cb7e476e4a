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
//!
//! A handler that writes to the same database can mark its key done in its own transaction
//! with [`IdempotencyKey`]: the key is then done exactly when the handler's writes are
//! committed, and a crash between that commit and the acknowledgement cannot run the
//! handler again, even before the framework marks the key done itself (which then changes
//! nothing).
//!
//! ```no_run
//! use messaging_core::prelude::*;
//! use messaging_postgres::IdempotencyKey;
//! use tokio::sync::Mutex;
//!
//! struct Db {
//!     client: Mutex<tokio_postgres::Client>,
//! }
//!
//! #[message_handler(topic = "payments", idempotent)]
//! async fn charge(order: serde_json::Value, key: IdempotencyKey, db: State<Db>) -> anyhow::Result<()> {
//!     let mut client = db.client.lock().await;
//!     let tx = client.transaction().await?;
//!     tx.execute("INSERT INTO payments (body) VALUES ($1)", &[&order.to_string()]).await?;
//!     key.mark_done(&tx).await?; // done if, and when, the transaction commits
//!     tx.commit().await?;
//!     Ok(())
//! }
//! ```

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use messaging_core::idempotency::{
    Begin, Claim, IdempotencyError, IdempotencyStore, IdempotencyStoreFactory,
};
use messaging_core::{BoxFuture, FromContext, HandlerError, Invocation};
use tokio_postgres::{Client, GenericClient, NoTls};

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
        // `IF NOT EXISTS` does not stop two connections creating the table at once (one
        // fails on a catalog unique index), as instances starting together on a fresh
        // database would: a transaction-scoped advisory lock on the table's name lets one
        // create it at a time.
        client
            .batch_execute(&format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(hashtext('messaging_idempotency'), hashtext('{table}'));
                 CREATE TABLE IF NOT EXISTS {table} (
                    key text PRIMARY KEY,
                    owner text,
                    lease_until timestamptz,
                    done_until timestamptz
                 );
                 COMMIT;"
            ))
            .await
            .map_err(failed)?;
        Ok(Self {
            client,
            table: table.to_owned(),
            completions: AtomicU64::new(0),
        })
    }

    /// The table the keys are in.
    pub fn table(&self) -> &str {
        &self.table
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
                    // Nothing changes when the handler already marked it done in its own
                    // transaction ([`IdempotencyKey::mark_done`]).
                    &format!(
                        "INSERT INTO {t} AS row (key, owner, lease_until, done_until)
                         VALUES ($1, $2, NULL, now() + $3::bigint * interval '1 millisecond')
                         ON CONFLICT (key) DO UPDATE
                           SET owner = EXCLUDED.owner, lease_until = NULL,
                               done_until = EXCLUDED.done_until
                           WHERE NOT (row.owner = EXCLUDED.owner AND row.done_until IS NOT NULL)"
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

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        Box::pin(async move {
            let t = &self.table;
            // A row the handler's own transaction locked (it is marking the key done) is
            // skipped rather than waited for: waiting would hold up every other key's
            // statement on this connection until that transaction ends.
            let renewed = self
                .client
                .query_opt(
                    &format!(
                        "WITH held AS (
                           SELECT key FROM {t}
                           WHERE key = $1 AND owner = $2 AND done_until IS NULL
                           FOR UPDATE SKIP LOCKED
                         )
                         UPDATE {t} SET lease_until = now() + $3::bigint * interval '1 millisecond'
                         FROM held WHERE {t}.key = held.key
                         RETURNING 1"
                    ),
                    &[&key, &owner, &millis(lease)],
                )
                .await
                .map_err(failed)?;
            if renewed.is_some() {
                return Ok(true);
            }
            // Skipped (locked) or no longer this owner's: a plain read tells, without waiting.
            let still = self
                .client
                .query_opt(
                    &format!(
                        "SELECT 1 FROM {t} WHERE key = $1 AND owner = $2 AND done_until IS NULL"
                    ),
                    &[&key, &owner],
                )
                .await
                .map_err(failed)?;
            Ok(still.is_some())
        })
    }

    fn as_any(&self) -> Option<&(dyn Any + Send + Sync)> {
        Some(self)
    }
}

/// A handler argument of an idempotent handler whose keys are kept in PostgreSQL: the key
/// its attempt holds, to mark done in the handler's own transaction with
/// [`IdempotencyKey::mark_done`] (see the [crate] documentation).
///
/// For a message with no idempotency key (nor envelope id) there is nothing to mark:
/// `mark_done` does nothing. Resolving it fails the attempt for good when the keys are kept
/// in another store (`MESSAGING_IDEMPOTENCY_STORE` is not `postgres`).
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    held: Option<(Claim, String)>,
}

/// Why [`IdempotencyKey::mark_done`] (or making an [`IdempotencyKey`]) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarkError {
    /// The attempt no longer holds the key: it ran longer than its lease and another
    /// delivery took the key over, or the key is done. Roll the transaction back.
    #[error(
        "the idempotency key `{key}` is no longer this attempt's (its lease ran out and another \
         delivery took it, or it is done); roll the transaction back"
    )]
    NotHeld {
        /// The key in the store.
        key: String,
    },
    /// The keys are kept in another store.
    #[error(
        "the handler's idempotency keys are kept in the `{store}` store, not PostgreSQL: set \
         MESSAGING_IDEMPOTENCY_STORE=postgres to mark them done in the handler's transaction"
    )]
    NotPostgres {
        /// The store's name.
        store: &'static str,
    },
    /// The statement failed.
    #[error("marking the idempotency key done failed: {0}")]
    Database(#[from] tokio_postgres::Error),
}

impl IdempotencyKey {
    /// The key of `claim`, which must be kept by a [`PostgresIdempotencyStore`]. A handler
    /// takes it as an argument instead; this is for code that runs the handler's body
    /// itself (tests).
    pub fn from_claim(claim: Claim) -> Result<Self, MarkError> {
        let table = claim
            .store()
            .as_any()
            .and_then(|store| store.downcast_ref::<PostgresIdempotencyStore>())
            .map(|store| store.table.clone())
            .ok_or(MarkError::NotPostgres {
                store: claim.store().name(),
            })?;
        Ok(Self {
            held: Some((claim, table)),
        })
    }

    /// The key in the store (the idempotency key scoped by group), if the message has one.
    pub fn key(&self) -> Option<&str> {
        self.held.as_ref().map(|(claim, _)| claim.key())
    }

    /// Marks the key done in `client`'s transaction (a [`tokio_postgres::Transaction`]; on
    /// a plain [`Client`] it is done at once): done for the handler's TTL if and when the
    /// transaction commits, still held by this attempt if it rolls back. It takes the
    /// key's row lock until then, so another member's delivery of the key waits for the
    /// outcome. [`MarkError::NotHeld`] when the attempt lost the key: roll back then.
    pub async fn mark_done<C: GenericClient + Sync>(&self, client: &C) -> Result<(), MarkError> {
        let Some((claim, table)) = &self.held else {
            return Ok(());
        };
        let marked = client
            .execute(
                &format!(
                    "UPDATE {table}
                     SET done_until = now() + $3::bigint * interval '1 millisecond',
                         lease_until = NULL
                     WHERE key = $1 AND owner = $2 AND done_until IS NULL"
                ),
                &[&claim.key(), &claim.owner(), &millis(claim.ttl())],
            )
            .await?;
        if marked == 0 {
            return Err(MarkError::NotHeld {
                key: claim.key().to_owned(),
            });
        }
        Ok(())
    }
}

impl FromContext for IdempotencyKey {
    fn from_context(_invocation: &Invocation) -> Result<Self, HandlerError> {
        match Claim::current() {
            Some(claim) => Self::from_claim(claim).map_err(HandlerError::permanent),
            None => Ok(Self { held: None }),
        }
    }
}

inventory::submit! {
    IdempotencyStoreFactory {
        name: STORE,
        url_example: Some("postgres://postgres@127.0.0.1:5432/app"),
        connect: |config| {
            // Never empty: core refuses a store with a `url_example` and no URL.
            let url = config.url.clone().unwrap_or_default();
            Box::pin(async move {
                let store = PostgresIdempotencyStore::connect(&url).await?;
                Ok(Arc::new(store) as Arc<dyn IdempotencyStore>)
            })
        },
    }
}
