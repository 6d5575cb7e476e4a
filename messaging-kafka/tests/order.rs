//! A handler failing with retries keeps its key's order: later messages of that key (within
//! its partition) wait for it, while the other keys, of its partition too, go on.
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test order

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Log, connect, eventually, producer, start, unique};
use messaging_core::{
    HandlerError, HandlerSpec, Invocation, Position, RetryPolicy, SendOptions, decode_json,
};
use serde_json::json;

const MESSAGES: u64 = 120;
const RETRY_DELAY: Duration = Duration::from_millis(300);

/// One attempt: which message, where, which attempt, when it started and ended, its outcome.
#[derive(Clone, Debug)]
struct Attempt {
    n: u64,
    key: String,
    partition: i32,
    offset: i64,
    attempt: u32,
    started: Instant,
    ended: Instant,
    ok: bool,
}

/// The runtime's lanes in this test.
const LANES: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_holds_back_its_key_only() {
    let broker = connect(6).await;
    let topic = unique("ordered");
    // Everything is published first, so every partition has work waiting when the first
    // message of one starts failing.
    let producer = producer(&broker);
    for n in 0..MESSAGES {
        producer
            .send_with(
                &topic,
                &json!({"n": n}),
                SendOptions::key(format!("k{}", n % 12)),
            )
            .await
            .expect("send is acknowledged");
    }
    let log: Log<Attempt> = Log::default();
    // Partitions are fetched in no set order: other messages wait (up to 2 s) for message 0's
    // first failure, so that whether they then go on during its retries is what is measured.
    let (failed_once, _) = tokio::sync::watch::channel(false);
    let failed_once = std::sync::Arc::new(failed_once);
    let handler = HandlerSpec::new("ordered", [topic.clone()], {
        let log = log.clone();
        move |inv: Invocation| {
            let (log, failed_once) = (log.clone(), failed_once.clone());
            async move {
                let n = decode_json::<serde_json::Value>(&inv.message)?["n"]
                    .as_u64()
                    .unwrap_or(u64::MAX);
                if n != 0 {
                    // Bounded: a message ahead of message 0 in its lane must not wait for ever.
                    let mut gate = failed_once.subscribe();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), gate.wait_for(|f| *f)).await;
                }
                let started = Instant::now();
                let Position::Partition { partition, offset } = inv.message.position else {
                    panic!("not a Kafka position");
                };
                let key = inv.message.key_str().unwrap_or_default().to_owned();
                // Message 0 fails twice, then succeeds on its third attempt.
                let ok = n != 0 || inv.attempt >= 3;
                tokio::time::sleep(Duration::from_millis(5)).await;
                log.push(Attempt {
                    n,
                    key,
                    partition,
                    offset,
                    attempt: inv.attempt,
                    started,
                    ended: Instant::now(),
                    ok,
                });
                if n == 0 {
                    failed_once.send_replace(true);
                }
                if ok {
                    Ok(())
                } else {
                    Err(HandlerError::retryable("not yet"))
                }
            }
        }
    })
    .group(unique("ordered"))
    .retry(RetryPolicy::new(3, RETRY_DELAY));
    let runtime = start(&broker, vec![handler], LANES).await;
    eventually("every message handled", Duration::from_secs(60), || {
        log.all().iter().filter(|a| a.ok).count() as u64 >= MESSAGES
    })
    .await;
    runtime.shutdown().await.unwrap();

    let attempts = log.all();
    let zero: Vec<&Attempt> = attempts.iter().filter(|a| a.n == 0).collect();
    assert_eq!(
        zero.iter().map(|a| (a.attempt, a.ok)).collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, true)]
    );
    let (held_partition, held_offset) = (zero[0].partition, zero[0].offset);
    let held_key = zero[0].key.clone();
    let (first_failure, success) = (zero[0].ended, zero[2].ended);

    // Its key: nothing after it started before it succeeded, and each key's order is kept.
    let mut by_key: BTreeMap<(i32, String), Vec<&Attempt>> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.ok) {
        by_key
            .entry((a.partition, a.key.clone()))
            .or_default()
            .push(a);
    }
    for a in &by_key[&(held_partition, held_key.clone())] {
        if a.offset > held_offset {
            assert!(
                a.started >= success,
                "offset {} of the held key ran before the retried message succeeded",
                a.offset
            );
        }
    }
    for ((partition, key), handled) in &by_key {
        let offsets: Vec<i64> = handled.iter().map(|a| a.offset).collect();
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        assert_eq!(
            offsets, sorted,
            "key {key} of partition {partition} handled out of order"
        );
    }
    // Other keys went on while message 0 waited between its attempts, in its own partition
    // too when it holds another key.
    let meanwhile = |same_partition: bool| {
        attempts
            .iter()
            .filter(|a| {
                a.key != held_key
                    && (a.partition == held_partition) == same_partition
                    && a.ok
                    && a.started > first_failure
                    && a.ended < success
            })
            .count()
    };
    assert!(
        meanwhile(false) > 0,
        "no other partition made progress during the retries"
    );
    let keys_with_it = by_key
        .keys()
        .filter(|(p, k)| *p == held_partition && *k != held_key)
        .count();
    if keys_with_it > 0 {
        assert!(
            meanwhile(true) > 0,
            "the other keys of its partition waited for the retries"
        );
    }
    assert!(
        by_key
            .keys()
            .map(|(p, _)| p)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "messages spread over several partitions"
    );
}
