//! Idempotent handlers on every broker with every store (issue 24, done-when 4): the test
//! bodies that each broker's test file runs once per store with [`crate::idempotency_suite!`].
//!
//! - [`idempotent_handler_runs_once_for_a_key_delivered_twice`]: one idempotency key
//!   published twice runs the handler once; the second delivery is a duplicate, counted by
//!   `messaging_duplicates_total`, and both are acknowledged.
//! - [`idempotent_handler_runs_once_for_two_members_at_once`]: two members of one group
//!   (two runtimes) get copies of one key while the first copy's handler still runs: one run,
//!   never two at once.
//! - [`idempotent_lease_is_renewed_while_the_handler_runs`]: a handler running five times
//!   its lease keeps its key; the copies waiting for it never take it over.
//!
//! What reached the broker is watched through [`Watched`], a broker that hands every call to
//! the real one and records what the runtime acknowledged; what reached the store, through
//! [`Tracked`], which records what each member's `try_begin` found. The redelivery after a
//! SIGKILL between success and acknowledgement needs processes: `tests/idempotency_crash.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use messaging_core::idempotency::{Begin, IdempotencyError, IdempotencyStore};
use messaging_core::metrics::metrics;
use messaging_core::{
    Acker, BoxFuture, Broker, BrokerError, Consumer, DlqSnapshot, HandlerSpec, Invocation, Message,
    OutgoingMessage, Readiness, Runtime, SendOptions, Subscription,
};
use serde_json::json;

use crate::Connect;
use crate::suite::{Log, Scenario, conformance_config, eventually};

/// Connects an idempotency store, as a new process would (a new connection each call; the
/// memory store is new each call too, so a test shares one between its members).
pub type ConnectStore = fn() -> BoxFuture<'static, Arc<dyn IdempotencyStore>>;

/// Expands to one `#[tokio::test]` per idempotency test body for each store, in a module
/// per store:
///
/// ```ignore
/// messaging_tests::idempotency_suite!(connect,
///     memory_store => messaging_tests::idempotency::memory_store,
///     redis_store => messaging_tests::idempotency::redis_store,
/// );
/// ```
#[macro_export]
macro_rules! idempotency_suite {
    ($connect:path, $($module:ident => $store:path),+ $(,)?) => {
        $(
            mod $module {
                #[allow(unused_imports)]
                use super::*;
                $crate::idempotency_suite!(@each $connect, $store;
                    idempotent_handler_runs_once_for_a_key_delivered_twice,
                    idempotent_handler_runs_once_for_two_members_at_once,
                );
            }
        )+
    };
    (@each $connect:path, $store:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::idempotency::$name($connect, $store).await
            }
        )*
    };
}

/// A memory store, new each call.
pub fn memory_store() -> BoxFuture<'static, Arc<dyn IdempotencyStore>> {
    Box::pin(async {
        Arc::new(messaging_core::idempotency::MemoryIdempotencyStore::new(
            10_000,
        )) as Arc<dyn IdempotencyStore>
    })
}

/// The Redis store on 127.0.0.1:6379 (`scripts/start-redis.sh`); panics when unreachable.
#[cfg(feature = "redis")]
pub fn redis_store() -> BoxFuture<'static, Arc<dyn IdempotencyStore>> {
    const URL: &str = "redis://127.0.0.1:6379/0";
    Box::pin(async {
        match messaging_redis::RedisIdempotencyStore::connect(URL).await {
            Ok(store) => Arc::new(store) as Arc<dyn IdempotencyStore>,
            Err(error) => {
                panic!("Redis is not reachable at {URL} (run scripts/start-redis.sh): {error}")
            }
        }
    })
}

/// The PostgreSQL store on 127.0.0.1:5432, database `test` (`scripts/start-postgres.sh`),
/// in its default table; panics when unreachable.
#[cfg(feature = "postgres")]
pub fn postgres_store() -> BoxFuture<'static, Arc<dyn IdempotencyStore>> {
    const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    Box::pin(async {
        match messaging_postgres::PostgresIdempotencyStore::connect(URL).await {
            Ok(store) => Arc::new(store) as Arc<dyn IdempotencyStore>,
            Err(error) => panic!(
                "PostgreSQL is not reachable at {URL} (run scripts/start-postgres.sh): {error}"
            ),
        }
    })
}

/// What the runtime acknowledged through a [`Watched`] broker: each message's topic and
/// idempotency key.
pub type Acks = Log<(String, String)>;

/// A broker that hands every call to `inner` and records each message its consumers'
/// ackers acknowledged (once the real acknowledgement succeeded).
pub struct Watched {
    inner: Arc<dyn Broker>,
    acks: Acks,
}

impl Watched {
    /// `inner`, recording into `acks`.
    pub fn wrap(inner: Arc<dyn Broker>, acks: Acks) -> Arc<dyn Broker> {
        Arc::new(Self { inner, acks })
    }
}

fn ack_record(message: &Message) -> (String, String) {
    let key = messaging_core::idempotency::key_of(message).unwrap_or_default();
    (message.topic.to_string(), key.to_owned())
}

impl Broker for Watched {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn publish(&self, message: OutgoingMessage) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish(message)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> BoxFuture<'_, Result<Box<dyn Consumer>, BrokerError>> {
        Box::pin(async move {
            let inner = self.inner.subscribe(subscription).await?;
            let acks = self.acks.clone();
            Ok(Box::new(WatchedConsumer { inner, acks }) as Box<dyn Consumer>)
        })
    }

    fn declare_topics<'a>(
        &'a self,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.inner.declare_topics(topics)
    }

    fn browse<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>, BrokerError>> {
        self.inner.browse(topic, limit)
    }

    fn max_unacknowledged(&self) -> Option<Duration> {
        self.inner.max_unacknowledged()
    }

    fn dlq_snapshot<'a>(
        &'a self,
        topic: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Box<dyn DlqSnapshot>, BrokerError>> {
        self.inner.dlq_snapshot(topic, limit)
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.flush(timeout)
    }
}

struct WatchedConsumer {
    inner: Box<dyn Consumer>,
    acks: Acks,
}

impl Consumer for WatchedConsumer {
    fn readiness(&self) -> Readiness {
        self.inner.readiness()
    }

    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Arc<Message>>, BrokerError>> {
        self.inner.next_batch(max)
    }

    fn acker(&self) -> Arc<dyn Acker> {
        Arc::new(WatchedAcker {
            inner: self.inner.acker(),
            acks: self.acks.clone(),
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.inner.close()
    }
}

struct WatchedAcker {
    inner: Arc<dyn Acker>,
    acks: Acks,
}

impl Acker for WatchedAcker {
    fn ack<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner.ack(message).await?;
            self.acks.push(ack_record(message));
            Ok(())
        })
    }

    fn ack_batch<'a>(
        &'a self,
        messages: &'a [Arc<Message>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner.ack_batch(messages).await?;
            for message in messages {
                self.acks.push(ack_record(message));
            }
            Ok(())
        })
    }
}

/// What one member's `try_begin` found for a key, and when: (member, store key, outcome,
/// time).
pub type Begins = Log<(usize, String, Begin, Instant)>;

/// A store that hands every call to `inner` and records, for member `member`, what each
/// `try_begin` found.
pub struct Tracked {
    inner: Arc<dyn IdempotencyStore>,
    member: usize,
    begins: Begins,
}

impl Tracked {
    /// `inner` as member `member` uses it, recording into `begins`.
    pub fn wrap(
        inner: Arc<dyn IdempotencyStore>,
        member: usize,
        begins: Begins,
    ) -> Arc<dyn IdempotencyStore> {
        Arc::new(Self {
            inner,
            member,
            begins,
        })
    }
}

impl IdempotencyStore for Tracked {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn try_begin<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, IdempotencyError>> {
        Box::pin(async move {
            let begun = self.inner.try_begin(key, owner, lease).await?;
            self.begins
                .push((self.member, key.to_owned(), begun, Instant::now()));
            Ok(begun)
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        self.inner.complete(key, owner, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        self.inner.release(key, owner)
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        self.inner.renew(key, owner, lease)
    }
}

/// Runs of an idempotent handler, and how many ran at once at most.
#[derive(Default)]
struct Runs {
    done: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Runs {
    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    fn most_at_once(&self) -> usize {
        self.most_at_once.load(Ordering::SeqCst)
    }
}

/// An idempotent handler of `group` on `topic` counting its runs; each takes `takes`.
fn idempotent(topic: &str, group: &str, runs: &Arc<Runs>, takes: Duration) -> HandlerSpec {
    let runs = Arc::clone(runs);
    HandlerSpec::new("charge", [topic], move |_inv: Invocation| {
        let runs = Arc::clone(&runs);
        async move {
            let now = runs.running.fetch_add(1, Ordering::SeqCst) + 1;
            runs.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(takes).await;
            runs.running.fetch_sub(1, Ordering::SeqCst);
            runs.done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .group(group)
    .idempotent(true)
}

/// The suite's configuration with keys remembered for ten minutes, not a day, so that the
/// shared Redis and PostgreSQL do not keep every run's keys.
fn config() -> messaging_core::Config {
    let mut config = conformance_config();
    config.idempotency.ttl = Duration::from_secs(600);
    config
}

/// Starts two members of `group` with `handler` (made once per member), each on a
/// [`Watched`] connection of its own, with `shared` seen through a [`Tracked`] per member;
/// waits until both consume.
async fn two_members(
    s: &Scenario,
    shared: &Arc<dyn IdempotencyStore>,
    acks: &Acks,
    begins: &Begins,
    config: messaging_core::Config,
    handler: impl Fn() -> HandlerSpec,
) -> Vec<Runtime> {
    let mut members = Vec::new();
    for member in 0..2 {
        let store = Tracked::wrap(Arc::clone(shared), member, begins.clone());
        let broker = Watched::wrap(s.broker().await, acks.clone());
        let config = config.clone();
        members.push(
            s.start_on(broker, vec![handler()], |b| {
                b.config(config).idempotency_store(store)
            })
            .await,
        );
    }
    until_ready(&[&members[0], &members[1]]).await;
    members
}

/// How many acknowledgements of `topic` were recorded.
fn acked(acks: &Acks, topic: &str) -> usize {
    acks.all().iter().filter(|(t, _)| t == topic).count()
}

/// Waits until every group of `runtime` consumes (on Kafka: its partitions are assigned).
async fn until_ready(runtimes: &[&Runtime]) {
    eventually("every member consuming", || {
        runtimes.iter().all(|r| {
            let groups = r.connection().groups();
            !groups.is_empty() && groups.iter().all(|(_, readiness)| readiness.is_ready())
        })
    })
    .await;
}

/// One idempotency key published twice (as a publisher retrying after a lost
/// acknowledgement does), with one message key so that the second comes after the first:
/// the handler runs once, the second is a duplicate that `messaging_duplicates_total` counts,
/// and both are acknowledged.
pub async fn idempotent_handler_runs_once_for_a_key_delivered_twice(
    connect: Connect,
    store: ConnectStore,
) {
    let s = Scenario::new(connect);
    let topic = s.topic("payments");
    let group = s.group("payments");
    let (acks, begins) = (Acks::default(), Begins::default());
    let runs = Arc::<Runs>::default();
    let store = Tracked::wrap(store().await, 0, begins.clone());
    let broker = Watched::wrap(s.broker().await, acks.clone());
    let handler = idempotent(&topic, &group, &runs, Duration::ZERO);
    let runtime = s
        .start_on(broker, vec![handler], |b| {
            b.config(config()).idempotency_store(store)
        })
        .await;
    let producer = s.producer().await;
    for _ in 0..2 {
        producer
            .send_with(
                &topic,
                &json!({"order_id": 7}),
                SendOptions::key("7").idempotency_key("order-7"),
            )
            .await
            .expect("send is acknowledged");
    }
    eventually("both deliveries acknowledged", || acked(&acks, &topic) == 2).await;
    assert_eq!(runs.done(), 1, "the handler ran once");
    assert_eq!(
        metrics().duplicates(&topic, &group),
        1,
        "one duplicate counted"
    );
    let found: Vec<Begin> = begins.all().into_iter().map(|(_, _, b, _)| b).collect();
    assert_eq!(found, [Begin::Begun, Begin::Done]);
    assert!(
        acks.all().iter().all(|(_, key)| key == "order-7"),
        "{:?}",
        acks.all()
    );
    runtime.shutdown().await.unwrap();
}

/// Copies of one key per round.
pub const COPIES: usize = 6;

/// Rounds tried until the two members held one key at once.
pub const ROUNDS: usize = 30;

/// How long the handler takes: long enough that the other copies arrive while it runs.
const SLOW: Duration = Duration::from_millis(300);

/// Two members of one group, each a runtime of its own (on its own connection, with the one
/// store), get copies of one idempotency key at once: [`COPIES`] copies under different
/// message keys, so that they go to different lanes, partitions and members. The handler
/// runs once per key, never two runs at once, every other copy is a counted duplicate, and
/// all are acknowledged. Which member gets a copy is the broker's choice: rounds with fresh
/// keys go on (at most [`ROUNDS`]) until one member began the key while the other found it
/// in progress.
pub async fn idempotent_handler_runs_once_for_two_members_at_once(
    connect: Connect,
    store: ConnectStore,
) {
    let s = Scenario::new(connect);
    let topic = s.topic("parcels");
    let group = s.group("shipping");
    let (acks, begins) = (Acks::default(), Begins::default());
    let runs = Arc::<Runs>::default();
    // One store for both (the memory store lives in one process: shared, it is one).
    let shared = store().await;
    let members = two_members(&s, &shared, &acks, &begins, config(), || {
        idempotent(&topic, &group, &runs, SLOW)
    })
    .await;
    let producer = s.producer().await;
    let mut at_once = None;
    for round in 0..ROUNDS {
        let key = format!("parcel-{round}");
        for copy in 0..COPIES {
            producer
                .send_with(
                    &topic,
                    &json!({"parcel": round}),
                    SendOptions::key(format!("{round}-{copy}")).idempotency_key(&key),
                )
                .await
                .expect("send is acknowledged");
        }
        let rounds = round + 1;
        eventually("every copy of the round acknowledged", || {
            acked(&acks, &topic) == rounds * COPIES
        })
        .await;
        assert_eq!(runs.done(), rounds, "one run per key");
        assert_eq!(
            metrics().duplicates(&topic, &group),
            (rounds * (COPIES - 1)) as u64,
            "every other copy a counted duplicate"
        );
        let of_key: Vec<(usize, Begin)> = begins
            .all()
            .into_iter()
            .filter(|(_, k, _, _)| k.ends_with(&format!(":{key}")))
            .map(|(member, _, begun, _)| (member, begun))
            .collect();
        let began = of_key.iter().find(|(_, b)| *b == Begin::Begun).map(|m| m.0);
        assert_eq!(
            of_key.iter().filter(|(_, b)| *b == Begin::Begun).count(),
            1,
            "one member began {key}: {of_key:?}"
        );
        if of_key
            .iter()
            .any(|&(member, b)| b == Begin::InProgress && Some(member) != began)
        {
            at_once = Some(round);
            break;
        }
    }
    let round = at_once.unwrap_or_else(|| {
        panic!(
            "in {ROUNDS} rounds the other member never got a copy while the key was held: {:?}",
            begins.all()
        )
    });
    println!("the two members held one key at once in round {round}");
    assert_eq!(runs.most_at_once(), 1, "two runs at once");
    for member in members {
        member.shutdown().await.unwrap();
    }
}

/// The lease of [`idempotent_lease_is_renewed_while_the_handler_runs`].
const SHORT_LEASE: Duration = Duration::from_millis(300);

/// A handler that takes five times its lease (`MESSAGING_IDEMPOTENCY_LEASE`, 300 ms here),
/// in one of two members: its lease is renewed while it runs, so the copies of its key that
/// the members get meanwhile find it in progress (checked again with back-off, past the
/// time the lease would have run out twice) and then done; one run, never two at once.
pub async fn idempotent_lease_is_renewed_while_the_handler_runs(
    connect: Connect,
    store: ConnectStore,
) {
    let s = Scenario::new(connect);
    let topic = s.topic("exports");
    let group = s.group("exports");
    let (acks, begins) = (Acks::default(), Begins::default());
    let runs = Arc::<Runs>::default();
    let shared = store().await;
    let mut config = config();
    config.idempotency.lease = SHORT_LEASE;
    let members = two_members(&s, &shared, &acks, &begins, config, || {
        idempotent(&topic, &group, &runs, SHORT_LEASE * 5)
    })
    .await;
    let producer = s.producer().await;
    let send = |copy: usize| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            producer
                .send_with(
                    &topic,
                    &json!({"export": 1}),
                    SendOptions::key(format!("copy-{copy}")).idempotency_key("export-1"),
                )
                .await
                .expect("send is acknowledged")
        }
    };
    send(0).await;
    eventually("the first copy begun", || {
        begins.all().iter().any(|(_, _, b, _)| *b == Begin::Begun)
    })
    .await;
    for copy in 1..COPIES {
        send(copy).await;
    }
    eventually("every copy acknowledged", || acked(&acks, &topic) == COPIES).await;
    let begins = begins.all();
    let begun: Vec<Instant> = begins
        .iter()
        .filter(|(_, _, b, _)| *b == Begin::Begun)
        .map(|(_, _, _, at)| *at)
        .collect();
    assert_eq!(begun.len(), 1, "the key was taken over: {begins:?}");
    assert!(
        begins
            .iter()
            .any(|(_, _, b, at)| *b == Begin::InProgress && *at > begun[0] + SHORT_LEASE * 2),
        "no copy looked after the lease would have run out twice: {begins:?}"
    );
    assert_eq!(runs.done(), 1, "one run");
    assert_eq!(runs.most_at_once(), 1, "two runs at once");
    assert_eq!(
        metrics().duplicates(&topic, &group),
        (COPIES - 1) as u64,
        "the other copies counted as duplicates"
    );
    for member in members {
        member.shutdown().await.unwrap();
    }
}
