//! Two members of one group on a 6-partition topic share 10 000 messages; when one leaves
//! with unfinished messages, the other takes its partitions and handles everything at least
//! once, and no offset was ever committed past an unfinished message.
//!
//! The two members are two runtimes in this test process, each with its own Kafka client
//! (its own librdkafka instance and group membership), as two processes would have.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test group

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Log, committed, connect, eventually, eventually_async, producer, start_with, unique};
use messaging_core::{HandlerError, HandlerSpec, Invocation, Position, SendOptions, decode_json};
use serde_json::json;

const PARTITIONS: i32 = 6;
const N: u64 = 10_000;
const PATIENCE: Duration = Duration::from_secs(120);

/// (n, partition, offset) of a handled message.
type Seen = (u64, i32, i64);

fn seen(inv: &Invocation) -> Result<Seen, HandlerError> {
    let body: serde_json::Value = decode_json(&inv.message)?;
    let Position::Partition { partition, offset } = inv.message.position else {
        panic!("not a Kafka position: {}", inv.message.position);
    };
    Ok((body["n"].as_u64().expect("n"), partition, offset))
}

/// A member's handler: records what it handled; once `frozen`, records and never finishes.
fn worker(
    topic: &str,
    group: &str,
    handled: Log<Seen>,
    frozen: Arc<AtomicBool>,
    stuck: Log<Seen>,
) -> HandlerSpec {
    HandlerSpec::new("worker", [topic.to_owned()], move |inv: Invocation| {
        let (handled, frozen, stuck) = (handled.clone(), Arc::clone(&frozen), stuck.clone());
        async move {
            let s = seen(&inv)?;
            if frozen.load(Ordering::SeqCst) {
                stuck.push(s);
                std::future::pending::<()>().await;
            }
            handled.push(s);
            Ok(())
        }
    })
    .group(group)
}

async fn publish(broker: &messaging_kafka::KafkaBroker, topic: &str, range: std::ops::Range<u64>) {
    let producer = producer(broker);
    let numbers: Vec<u64> = range.collect();
    for chunk in numbers.chunks(500) {
        let sends = chunk.iter().map(|&n| {
            let producer = producer.clone();
            async move {
                producer
                    .send_with(
                        topic,
                        &json!({"n": n}),
                        SendOptions::key(format!("k{}", n % 97)),
                    )
                    .await
            }
        });
        for result in futures::future::join_all(sends).await {
            result.expect("send is acknowledged");
        }
    }
}

fn distinct(logs: &[&Log<Seen>]) -> HashSet<u64> {
    logs.iter()
        .flat_map(|l| l.all())
        .map(|(n, _, _)| n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_and_the_survivor_takes_over_without_losing_unfinished_messages() {
    let topic = unique("shared");
    let group = unique("workers");
    let (broker_a, broker_b) = (
        connect(PARTITIONS as u32).await,
        connect(PARTITIONS as u32).await,
    );
    let (handled_a, handled_b, stuck_a) = (Log::default(), Log::default(), Log::default());
    let frozen_a = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));

    let a = start_with(
        &broker_a,
        vec![worker(
            &topic,
            &group,
            handled_a.clone(),
            Arc::clone(&frozen_a),
            stuck_a.clone(),
        )],
        8,
        Duration::from_millis(200),
    )
    .await;
    let b = start_with(
        &broker_b,
        vec![worker(
            &topic,
            &group,
            handled_b.clone(),
            never,
            Log::default(),
        )],
        8,
        Duration::from_secs(10),
    )
    .await;

    // Phase 1: both members work.
    publish(&broker_a, &topic, 0..N / 2).await;
    eventually("the first half handled", PATIENCE, || {
        distinct(&[&handled_a, &handled_b]).len() as u64 >= N / 2
    })
    .await;
    let partitions = |log: &Log<Seen>| {
        log.all()
            .iter()
            .map(|(_, p, _)| *p)
            .collect::<BTreeSet<i32>>()
    };
    let (parts_a, parts_b) = (partitions(&handled_a), partitions(&handled_b));
    assert!(
        !parts_a.is_empty() && !parts_b.is_empty(),
        "both members got partitions: {parts_a:?} {parts_b:?}"
    );
    assert!(
        parts_a.is_disjoint(&parts_b),
        "a partition belongs to one member: {parts_a:?} {parts_b:?}"
    );
    assert_eq!(parts_a.len() + parts_b.len(), PARTITIONS as usize);

    // Phase 2: A takes messages and never finishes them.
    frozen_a.store(true, Ordering::SeqCst);
    publish(&broker_a, &topic, N / 2..N).await;
    eventually("A holding unfinished messages", PATIENCE, || {
        !stuck_a.all().is_empty()
    })
    .await;
    // Per partition, the first message A got stuck on.
    let mut first_stuck: BTreeMap<i32, (u64, i64)> = BTreeMap::new();
    for (n, p, o) in stuck_a.all() {
        let entry = first_stuck.entry(p).or_insert((n, o));
        if o < entry.1 {
            *entry = (n, o);
        }
    }
    // Everything before it was acknowledged, so the periodic commit reaches it, and no further.
    let stuck_partitions: Vec<i32> = first_stuck.keys().copied().collect();
    eventually_async(
        "A's commits to reach its first unfinished messages",
        PATIENCE,
        || async {
            let now = committed(&group, &topic, PARTITIONS).await;
            stuck_partitions
                .iter()
                .all(|p| now[*p as usize] == Some(first_stuck[p].1))
        },
    )
    .await;
    // A negative check: the commits must stay there. 1 s is five auto-commit rounds
    // (`auto.commit.interval.ms` = 200 in `common::connect`), so a commit past the
    // unfinished offsets would have happened by then.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = committed(&group, &topic, PARTITIONS).await;
    for (p, (_, offset)) in &first_stuck {
        assert_eq!(
            later[*p as usize],
            Some(*offset),
            "partition {p}: committed past the unfinished offset {offset}"
        );
    }

    // Phase 3: A leaves; its in-flight messages are abandoned, unacknowledged.
    a.shutdown().await.unwrap();
    eventually("every message handled at least once", PATIENCE, || {
        distinct(&[&handled_a, &handled_b]).len() as u64 == N
    })
    .await;
    let b_after: BTreeSet<i32> = partitions(&handled_b);
    assert_eq!(
        b_after.len(),
        PARTITIONS as usize,
        "B took over A's partitions: {b_after:?}"
    );
    let by_b: HashSet<u64> = handled_b.all().iter().map(|(n, _, _)| *n).collect();
    for (n, p, o) in stuck_a.all() {
        assert!(
            by_b.contains(&n),
            "the unfinished message {n} (partition {p} offset {o}) was not redelivered to B"
        );
    }
    // Once B is done, the group's commits cover every message.
    eventually_async("B's commits to reach the end", PATIENCE, || async {
        let ends = committed(&group, &topic, PARTITIONS).await;
        let handled = handled_a.all().into_iter().chain(handled_b.all());
        let mut last_offset = BTreeMap::new();
        for (_, p, o) in handled {
            let e = last_offset.entry(p).or_insert(o);
            *e = (*e).max(o);
        }
        last_offset
            .iter()
            .all(|(p, o)| ends[*p as usize] == Some(o + 1))
    })
    .await;
    b.shutdown().await.unwrap();
}
