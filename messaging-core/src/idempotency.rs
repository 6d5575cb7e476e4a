//! Idempotent handlers: a handler flagged `idempotent` runs at most once per idempotency key
//! (the `x-idempotency-key` header, else the envelope id `x-event-id`) and group while the key
//! is remembered. The keys live in an [`IdempotencyStore`] chosen by configuration
//! (`MESSAGING_IDEMPOTENCY_STORE`): `memory` is built in; store crates register others by
//! name through `inventory`, as broker crates do, so that core names none of them.
//!
//! A key goes through three states: absent, in progress (held by one delivery for a lease)
//! and done (for a TTL). A delivery that finds it done is a duplicate: acknowledged without
//! running, and counted. One that finds it in progress waits and checks again, so that two
//! deliveries of one key never run at once. A failed attempt releases the key, so that its
//! retry (or a redelivery) runs.
//!
//! While the handler runs, its lease is renewed every third of it ([`IdempotencyStore::renew`]),
//! so that a handler slower than the lease keeps its key and no other member takes it over
//! mid-run; a crashed member stops renewing, and its key is free once the lease runs out.
//! The handler's attempt can see the key it holds ([`Claim::current`]): a store whose keys
//! live beside the handler's own data (PostgreSQL) can mark it done in the handler's
//! transaction, after which the framework's completion changes nothing.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::handler::BoxFuture;

/// What [`IdempotencyStore::try_begin`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// The key was free: the caller holds it for the lease and runs the handler.
    Begun,
    /// The key is done: the message is a duplicate.
    Done,
    /// Another delivery holds the key and its lease has not run out.
    InProgress,
}

/// A store failure: the attempt fails (and is retried) rather than risk running twice.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store `{store}`: {message}")]
pub struct IdempotencyError {
    /// The store's name (`memory`, `redis`, `postgres`).
    pub store: &'static str,
    /// What went wrong.
    pub message: String,
}

impl IdempotencyError {
    /// An error of store `store`.
    pub fn new(store: &'static str, message: impl fmt::Display) -> Self {
        Self {
            store,
            message: message.to_string(),
        }
    }
}

/// Where idempotency keys are remembered. Boxed futures, as in [`crate::Broker`]: the store
/// is chosen at run time and used as `dyn IdempotencyStore`.
///
/// `owner` is a token unique to one attempt: [`IdempotencyStore::release`] frees the key only
/// while that attempt still holds it, so a delivery whose lease ran out cannot free the key
/// of the one that took it over.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The store's name, for logs.
    fn name(&self) -> &'static str;

    /// Takes `key` for `lease` when it is absent (or its lease or TTL ran out).
    fn try_begin<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, IdempotencyError>>;

    /// Marks `key` done for `ttl`: later deliveries are duplicates until it runs out.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>>;

    /// Frees `key` if `owner` still holds it in progress, so that a retry runs.
    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>>;

    /// Extends `owner`'s hold of `key` in progress to `lease` from now, while its handler
    /// runs. `false` when `owner` no longer holds it in progress: its lease ran out and
    /// another delivery took the key, or the key is done.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>>;

    /// The store as [`Any`], for code that knows its type (messaging-postgres marks a key
    /// done in a handler's transaction through its store). Default: `None`.
    fn as_any(&self) -> Option<&(dyn Any + Send + Sync)> {
        None
    }
}

/// Where idempotency keys are kept, read from `MESSAGING_IDEMPOTENCY_*`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyConfig {
    /// The store's name: `memory` or a linked store crate's (`MESSAGING_IDEMPOTENCY_STORE`).
    pub store: String,
    /// The store's address, for stores that need one (`MESSAGING_IDEMPOTENCY_URL`).
    pub url: Option<String>,
    /// How long a handled key is remembered (`MESSAGING_IDEMPOTENCY_TTL`, default 24 h).
    pub ttl: Duration,
    /// How long a delivery holds its key while its handler runs, at least
    /// (`MESSAGING_IDEMPOTENCY_LEASE`, default 60 s; a handler's `timeout` lengthens it): past
    /// it, a crashed delivery's key is free again.
    pub lease: Duration,
    /// How many keys the memory store keeps at most (`MESSAGING_IDEMPOTENCY_CAPACITY`,
    /// default 100 000); past it, the keys closest to expiry are forgotten first.
    pub capacity: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            store: "memory".to_owned(),
            url: None,
            ttl: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(60),
            capacity: 100_000,
        }
    }
}

impl fmt::Debug for IdempotencyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyConfig")
            .field("store", &self.store)
            // A database URL may carry a password.
            .field("url", &self.url.as_deref().map(crate::config::mask_url))
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl IdempotencyConfig {
    /// Reads `MESSAGING_IDEMPOTENCY_*` through `set` (which yields only non-blank values).
    pub(crate) fn from_lookup(set: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut c = Self::default();
        if let Some(v) = set("MESSAGING_IDEMPOTENCY_STORE") {
            c.store = v.trim().to_ascii_lowercase();
        }
        c.url = set("MESSAGING_IDEMPOTENCY_URL").map(|v| v.trim().to_owned());
        let duration = |key: &str, v: &str| {
            humantime::parse_duration(v.trim()).map_err(|e| Error::Config {
                key: key.to_owned(),
                message: format!("`{v}` is not a duration ({e}); write e.g. `24h` or `90s`"),
            })
        };
        if let Some(v) = set("MESSAGING_IDEMPOTENCY_TTL") {
            c.ttl = duration("MESSAGING_IDEMPOTENCY_TTL", &v)?;
        }
        if let Some(v) = set("MESSAGING_IDEMPOTENCY_LEASE") {
            c.lease = duration("MESSAGING_IDEMPOTENCY_LEASE", &v)?;
        }
        if let Some(v) = set("MESSAGING_IDEMPOTENCY_CAPACITY") {
            c.capacity = v
                .trim()
                .parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .ok_or_else(|| Error::Config {
                    key: "MESSAGING_IDEMPOTENCY_CAPACITY".to_owned(),
                    message: format!("`{v}` is not a positive number of keys"),
                })?;
        }
        Ok(c)
    }
}

/// What an [`IdempotencyStoreFactory`] runs: connects the store with this configuration.
pub type ConnectStore =
    fn(
        &IdempotencyConfig,
    ) -> BoxFuture<'static, Result<Arc<dyn IdempotencyStore>, IdempotencyError>>;

/// Makes a store selectable by name. Store crates submit one with `inventory`.
pub struct IdempotencyStoreFactory {
    /// The name `MESSAGING_IDEMPOTENCY_STORE` selects it by.
    pub name: &'static str,
    /// For a store that needs an address (`MESSAGING_IDEMPOTENCY_URL`), an example of one
    /// (`redis://127.0.0.1:6379/0`): [`connect_store`] refuses to connect such a store
    /// without a URL, showing it, so that `connect` always gets one. `None` when it needs
    /// none.
    pub url_example: Option<&'static str>,
    /// Connects it.
    pub connect: ConnectStore,
}

inventory::collect!(IdempotencyStoreFactory);

/// Connects the store that `config` names: `memory`, or one registered by a linked crate.
pub async fn connect_store(config: &IdempotencyConfig) -> Result<Arc<dyn IdempotencyStore>, Error> {
    if config.store == "memory" {
        return Ok(Arc::new(MemoryIdempotencyStore::new(config.capacity)));
    }
    let Some(factory) = inventory::iter::<IdempotencyStoreFactory>
        .into_iter()
        .find(|f| f.name == config.store)
    else {
        let mut linked: Vec<&str> = inventory::iter::<IdempotencyStoreFactory>
            .into_iter()
            .map(|f| f.name)
            .collect();
        linked.insert(0, "memory");
        return Err(Error::Config {
            key: "MESSAGING_IDEMPOTENCY_STORE".to_owned(),
            message: format!(
                "unknown store `{}`; linked stores: {} (link the store's crate, e.g. \
                 messaging-redis or messaging-postgres)",
                config.store,
                linked.join(", ")
            ),
        });
    };
    if let Some(example) = factory.url_example
        && config.url.is_none()
    {
        return Err(Error::Config {
            key: "MESSAGING_IDEMPOTENCY_URL".to_owned(),
            message: format!(
                "the `{}` store needs its address: set MESSAGING_IDEMPOTENCY_URL, e.g. {example}",
                factory.name
            ),
        });
    }
    (factory.connect)(config).await.map_err(|e| Error::Config {
        key: "MESSAGING_IDEMPOTENCY_URL".to_owned(),
        message: e.to_string(),
    })
}

/// The idempotency key of `message` for an idempotent handler: the publisher's
/// `x-idempotency-key`, else the envelope id; `None` when it has neither.
pub fn key_of(message: &crate::Message) -> Option<&str> {
    use crate::message::header;
    message
        .header(header::IDEMPOTENCY_KEY)
        .or_else(|| message.header(header::EVENT_ID))
        .filter(|k| !k.is_empty())
}

/// An idempotent handler's store and timings, held by its dispatch target.
pub(crate) struct Guard {
    pub store: Arc<dyn IdempotencyStore>,
    pub ttl: Duration,
    pub lease: Duration,
}

impl Guard {
    /// Runs `attempt`, which holds `key` for `owner`: with the [`Claim`] in scope for the
    /// handler, and the lease renewed every third of it until the attempt ends (or is
    /// dropped, as a shutdown that times out drops it).
    pub(crate) async fn hold<F: Future>(&self, key: &str, owner: &str, attempt: F) -> F::Output {
        let claim = Claim::new(key, owner, self.ttl, Arc::clone(&self.store));
        let attempt = std::pin::pin!(CLAIM.scope(claim, attempt));
        let renewing = std::pin::pin!(renew_while_held(&*self.store, key, owner, self.lease));
        match futures::future::select(attempt, renewing).await {
            futures::future::Either::Left((outcome, _)) => outcome,
            futures::future::Either::Right((never, _)) => match never {},
        }
    }
}

/// Renews `owner`'s lease of `key` every third of `lease`, for ever; stops renewing (and
/// waits for ever) once the store says the key is no longer held. A failed renewal is
/// tried again at the next turn: the lease still has two thirds to run.
async fn renew_while_held(
    store: &dyn IdempotencyStore,
    key: &str,
    owner: &str,
    lease: Duration,
) -> std::convert::Infallible {
    let every = (lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        match store.renew(key, owner, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    store = store.name(),
                    key,
                    ?lease,
                    "the idempotency key's lease ran out while its handler ran (another delivery may run it too); lengthen MESSAGING_IDEMPOTENCY_LEASE"
                );
                break;
            }
            Err(error) => {
                tracing::warn!(store = store.name(), key, %error, "renewing the idempotency key's lease failed; trying again");
            }
        }
    }
    std::future::pending().await
}

tokio::task_local! {
    static CLAIM: Claim;
}

/// The idempotency key that an idempotent handler's attempt holds, seen from inside the
/// handler ([`Claim::current`]). Stores whose keys live beside the handler's own data use it
/// to mark the key done in the handler's transaction (`messaging_postgres::IdempotencyKey`).
#[derive(Clone)]
pub struct Claim {
    key: String,
    owner: String,
    ttl: Duration,
    store: Arc<dyn IdempotencyStore>,
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .field("ttl", &self.ttl)
            .field("store", &self.store.name())
            .finish()
    }
}

impl Claim {
    /// A claim of `key` (the store's key, [`scoped`] by group) by `owner` in `store`, to be
    /// done for `ttl`. The runtime makes them; tests of code that takes one may too.
    pub fn new(
        key: impl Into<String>,
        owner: impl Into<String>,
        ttl: Duration,
        store: Arc<dyn IdempotencyStore>,
    ) -> Self {
        Self {
            key: key.into(),
            owner: owner.into(),
            ttl,
            store,
        }
    }

    /// The claim of the idempotent handler running on this task, if it holds a key (`None`
    /// in a handler that is not idempotent, for a message with no key, and in tasks the
    /// handler spawns).
    pub fn current() -> Option<Self> {
        CLAIM.try_with(Self::clone).ok()
    }

    /// The key in the store: the idempotency key scoped by group ([`scoped`]).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token of the attempt holding it.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long it is remembered once done.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The store keeping it.
    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.store
    }
}

/// The store's key of idempotency key `key` in group `group`: groups never share keys.
pub fn scoped(group: &str, key: &str) -> String {
    format!("{}:{group}:{key}", group.len())
}

enum Slot {
    InProgress { owner: String, until: Instant },
    Done { until: Instant },
}

impl Slot {
    fn until(&self) -> Instant {
        match self {
            Slot::InProgress { until, .. } | Slot::Done { until } => *until,
        }
    }
}

/// Keys in this process's memory: bounded, each with its lease or TTL. Only for one
/// instance (tests, the quick start): instances do not see each other's keys.
pub struct MemoryIdempotencyStore {
    slots: Mutex<HashMap<String, Slot>>,
    capacity: usize,
}

impl fmt::Debug for MemoryIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryIdempotencyStore")
            .field("keys", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl MemoryIdempotencyStore {
    /// A store that keeps at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// How many keys it holds (some possibly expired, until the next purge).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Room for one more key: the expired go first, then (a tenth at a time, so that a full
    /// store does not scan on every insert) the done keys closest to expiry. Keys in
    /// progress are never dropped.
    fn make_room(slots: &mut HashMap<String, Slot>, capacity: usize, now: Instant) {
        if slots.len() < capacity {
            return;
        }
        slots.retain(|_, slot| slot.until() > now);
        if slots.len() < capacity {
            return;
        }
        let mut done: Vec<(Instant, String)> = slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Done { .. }))
            .map(|(k, s)| (s.until(), k.clone()))
            .collect();
        done.sort_unstable();
        for (_, key) in done.into_iter().take((capacity / 10).max(1)) {
            slots.remove(&key);
        }
    }

    fn begin(&self, key: &str, owner: &str, lease: Duration) -> Begin {
        let now = Instant::now();
        let mut slots = self.lock();
        match slots.get(key) {
            Some(Slot::Done { until }) if *until > now => return Begin::Done,
            Some(Slot::InProgress { until, .. }) if *until > now => return Begin::InProgress,
            Some(_) => {}
            None => Self::make_room(&mut slots, self.capacity, now),
        }
        slots.insert(
            key.to_owned(),
            Slot::InProgress {
                owner: owner.to_owned(),
                until: now + lease,
            },
        );
        Begin::Begun
    }

    fn done(&self, key: &str, ttl: Duration) {
        let now = Instant::now();
        let mut slots = self.lock();
        if !slots.contains_key(key) {
            Self::make_room(&mut slots, self.capacity, now);
        }
        slots.insert(key.to_owned(), Slot::Done { until: now + ttl });
    }

    fn free(&self, key: &str, owner: &str) {
        let mut slots = self.lock();
        if matches!(slots.get(key), Some(Slot::InProgress { owner: o, .. }) if o == owner) {
            slots.remove(key);
        }
    }

    /// A lease that ran out is renewed too while no other delivery took the key.
    fn extend(&self, key: &str, owner: &str, lease: Duration) -> bool {
        match self.lock().get_mut(key) {
            Some(Slot::InProgress { owner: o, until }) if o == owner => {
                *until = Instant::now() + lease;
                true
            }
            _ => false,
        }
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn try_begin<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, IdempotencyError>> {
        let begun = self.begin(key, owner, lease);
        Box::pin(async move { Ok(begun) })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        _owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        self.done(key, ttl);
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        self.free(key, owner);
        Box::pin(async { Ok(()) })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        let held = self.extend(key, owner, lease);
        Box::pin(async move { Ok(held) })
    }
}

/// The behaviour every [`IdempotencyStore`] owes the runtime, as test bodies that a store's
/// crate runs against its store with [`crate::idempotency_store_conformance!`] (the memory,
/// Redis and PostgreSQL stores do). Real time, short leases and TTLs; each body uses keys of
/// its own, so that stores sharing a namespace across runs do not see each other's keys.
pub mod conformance {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Begin, IdempotencyStore};

    const LEASE: Duration = Duration::from_secs(30);
    const SHORT: Duration = Duration::from_millis(300);
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A key no other run uses.
    fn key(name: &str) -> String {
        format!("conformance:{}:{name}", uuid::Uuid::now_v7().simple())
    }

    async fn begin(store: &dyn IdempotencyStore, key: &str, owner: &str) -> Begin {
        store.try_begin(key, owner, LEASE).await.expect("try_begin")
    }

    /// Polls `try_begin(key, owner)` until it begins; panics, naming `what`, when it finds
    /// anything but `expected` meanwhile or takes longer than 10 s.
    async fn until_begun(
        store: &dyn IdempotencyStore,
        key: &str,
        owner: &str,
        expected: Begin,
        what: &str,
    ) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match begin(store, key, owner).await {
                Begin::Begun => return,
                found if found == expected => {
                    assert!(Instant::now() < deadline, "{what} never ran out");
                }
                found => panic!("{what}: found {found:?}, not {expected:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A done key is a duplicate until its TTL runs out; then it begins again.
    pub async fn a_done_key_is_a_duplicate_until_its_ttl_runs_out(
        store: Arc<dyn IdempotencyStore>,
    ) {
        let k = key("ttl");
        assert_eq!(begin(&*store, &k, "a").await, Begin::Begun);
        store.complete(&k, "a", SHORT).await.unwrap();
        assert_eq!(begin(&*store, &k, "b").await, Begin::Done);
        until_begun(&*store, &k, "b", Begin::Done, "the TTL").await;
    }

    /// A key in progress is held; only its owner's release frees it; a release after
    /// completion leaves it done.
    pub async fn a_key_in_progress_is_held_and_only_its_owner_releases_it(
        store: Arc<dyn IdempotencyStore>,
    ) {
        let k = key("held");
        assert_eq!(begin(&*store, &k, "a").await, Begin::Begun);
        assert_eq!(begin(&*store, &k, "b").await, Begin::InProgress);
        store.release(&k, "b").await.unwrap();
        assert_eq!(
            begin(&*store, &k, "b").await,
            Begin::InProgress,
            "freed by another's release"
        );
        store.release(&k, "a").await.unwrap();
        assert_eq!(begin(&*store, &k, "b").await, Begin::Begun);
        store.complete(&k, "b", LEASE).await.unwrap();
        store.release(&k, "b").await.unwrap();
        assert_eq!(
            begin(&*store, &k, "c").await,
            Begin::Done,
            "a release undid the completion"
        );
    }

    /// A crashed holder's lease runs out and the key begins again; the old holder's release
    /// then does not free what the new one holds.
    pub async fn a_crashed_holders_lease_runs_out(store: Arc<dyn IdempotencyStore>) {
        let k = key("crashed");
        assert_eq!(store.try_begin(&k, "a", SHORT).await.unwrap(), Begin::Begun);
        until_begun(&*store, &k, "b", Begin::InProgress, "the lease").await;
        store.release(&k, "a").await.unwrap();
        assert_eq!(begin(&*store, &k, "c").await, Begin::InProgress);
    }

    /// Of many takers of one key at once, exactly one begins.
    pub async fn of_many_takers_at_once_one_begins(store: Arc<dyn IdempotencyStore>) {
        let k = Arc::new(key("contested"));
        let takers: Vec<_> = (0..16)
            .map(|i| {
                let (store, k) = (Arc::clone(&store), Arc::clone(&k));
                tokio::spawn(async move { begin(&*store, &k, &format!("o{i}")).await })
            })
            .collect();
        let mut begun = 0;
        for taker in takers {
            if taker.await.unwrap() == Begin::Begun {
                begun += 1;
            }
        }
        assert_eq!(begun, 1);
    }

    /// A lease renewed every third of it holds the key past its first term; once renewals
    /// stop it runs out, and the old holder's renewal then fails. A done key is not renewed.
    pub async fn a_renewed_lease_holds_the_key(store: Arc<dyn IdempotencyStore>) {
        let k = key("renewed");
        assert_eq!(store.try_begin(&k, "a", SHORT).await.unwrap(), Begin::Begun);
        let until = Instant::now() + SHORT * 3;
        while Instant::now() < until {
            tokio::time::sleep(SHORT / 3).await;
            assert!(
                store.renew(&k, "a", SHORT).await.unwrap(),
                "the holder's renewal failed"
            );
            assert_eq!(begin(&*store, &k, "b").await, Begin::InProgress);
        }
        assert!(
            !store.renew(&k, "b", SHORT).await.unwrap(),
            "renewed by another"
        );
        until_begun(&*store, &k, "b", Begin::InProgress, "the unrenewed lease").await;
        assert!(
            !store.renew(&k, "a", SHORT).await.unwrap(),
            "renewed what another took"
        );
        store.complete(&k, "b", LEASE).await.unwrap();
        assert!(
            !store.renew(&k, "b", SHORT).await.unwrap(),
            "renewed a done key"
        );
        assert_eq!(begin(&*store, &k, "c").await, Begin::Done);
    }
}

/// Expands to one `#[tokio::test]` per body of [`idempotency::conformance`](crate::idempotency::conformance),
/// each given a store from `$store`, an async function returning the store (each call a
/// fresh connection, as a new process would open it):
///
/// ```ignore
/// async fn store() -> RedisIdempotencyStore {
///     RedisIdempotencyStore::connect("redis://127.0.0.1:6379/0").await.unwrap()
/// }
/// messaging_core::idempotency_store_conformance!(store);
/// ```
#[macro_export]
macro_rules! idempotency_store_conformance {
    ($store:path) => {
        $crate::idempotency_store_conformance!(@each $store;
            a_done_key_is_a_duplicate_until_its_ttl_runs_out,
            a_key_in_progress_is_held_and_only_its_owner_releases_it,
            a_crashed_holders_lease_runs_out,
            of_many_takers_at_once_one_begins,
            a_renewed_lease_holds_the_key,
        );
    };
    (@each $store:path; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::idempotency::conformance::$name(::std::sync::Arc::new($store().await)).await
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(3600);

    async fn memory() -> MemoryIdempotencyStore {
        MemoryIdempotencyStore::new(1_000)
    }

    crate::idempotency_store_conformance!(memory);

    #[tokio::test(start_paused = true)]
    async fn a_full_store_forgets_expired_then_oldest_done_keys_never_those_in_progress() {
        let store = MemoryIdempotencyStore::new(10);
        for i in 0..10 {
            let key = format!("k{i}");
            assert_eq!(
                store.try_begin(&key, "a", LEASE).await.unwrap(),
                Begin::Begun
            );
            if i > 0 {
                // Done keys expire in the order they were made.
                tokio::time::advance(Duration::from_secs(1)).await;
                store.complete(&key, "a", TTL).await.unwrap();
            }
        }
        assert_eq!(store.len(), 10);
        assert_eq!(
            store.try_begin("new", "a", LEASE).await.unwrap(),
            Begin::Begun
        );
        assert!(store.len() <= 10, "{} keys", store.len());
        // k0 is in progress and kept; k1, the done key closest to expiry, was forgotten.
        assert_eq!(
            store.try_begin("k0", "b", LEASE).await.unwrap(),
            Begin::InProgress
        );
        assert_eq!(
            store.try_begin("k9", "b", LEASE).await.unwrap(),
            Begin::Done
        );
        assert_eq!(
            store.try_begin("k1", "b", LEASE).await.unwrap(),
            Begin::Begun
        );
    }

    #[test]
    fn configuration_from_the_environment() {
        let none = IdempotencyConfig::from_lookup(|_| None).unwrap();
        assert_eq!(none, IdempotencyConfig::default());
        assert_eq!(none.ttl, Duration::from_secs(86_400));
        let vars = [
            ("MESSAGING_IDEMPOTENCY_STORE", "Redis"),
            (
                "MESSAGING_IDEMPOTENCY_URL",
                "redis://:secret@127.0.0.1:6379/0",
            ),
            ("MESSAGING_IDEMPOTENCY_TTL", "2h"),
        ];
        let c = IdempotencyConfig::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(c.store, "redis");
        assert_eq!(c.ttl, Duration::from_secs(7200));
        assert!(!format!("{c:?}").contains("secret"));
        let bad = IdempotencyConfig::from_lookup(|k| {
            (k == "MESSAGING_IDEMPOTENCY_TTL").then(|| "a day".to_owned())
        })
        .unwrap_err();
        assert!(
            bad.to_string().contains("MESSAGING_IDEMPOTENCY_TTL"),
            "{bad}"
        );
    }
}
