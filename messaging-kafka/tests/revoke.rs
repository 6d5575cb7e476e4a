//! A rebalance while a member's handlers hold messages: the revoked partitions' in-flight
//! work is finished and committed before the partitions move, so the next owner does not
//! read it again (issue 3: "revoked partitions: finish in-flight work, commit").
//!
//! Member A handles slowly (1 s a message) a first half on a 6-partition topic; member B
//! joins the group while A is busy, which revokes A's partitions (librdkafka's default eager
//! assignment revokes all, then hands some to B); then the second half is published and
//! shared. Every message is handled, and none twice: what A held at the revocation was
//! finished and committed, not read again by B. (Before, the revocation committed only what
//! was settled, and B handled A's unfinished messages a second time.)
//!
//! Run with: scripts/start-kafka.sh && cargo test -p messaging-kafka --test revoke

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Log, committed, connect, eventually, eventually_async, producer, start, unique};
use messaging_core::{HandlerSpec, Invocation, Producer, SendOptions};

const PARTITIONS: u32 = 6;
const N: usize = 40;

type Handled = Log<(String, &'static str)>;

fn slow_worker(topic: &str, group: &str, member: &'static str, log: Handled) -> HandlerSpec {
    HandlerSpec::new("slow", [topic.to_owned()], move |inv: Invocation| {
        let log = log.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let body = String::from_utf8_lossy(&inv.message.payload).into_owned();
            log.push((body, member));
            Ok(())
        }
    })
    .group(group)
}

async fn publish(producer: &Producer, topic: &str, range: std::ops::Range<usize>) {
    for i in range {
        producer
            .send_with(topic, &format!("m{i}"), SendOptions::key(format!("k{i}")))
            .await
            .expect("sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_member_holds_at_a_revocation_is_finished_not_read_again() {
    let topic = unique("revoke");
    let group = unique("revokers");
    let (broker_a, broker_b) = (connect(PARTITIONS).await, connect(PARTITIONS).await);
    let log = Handled::default();
    let a = start(
        &broker_a,
        vec![slow_worker(&topic, &group, "a", log.clone())],
        6,
    )
    .await;
    let p = producer(&broker_a);
    publish(&p, &topic, 0..N / 2).await;
    // A is busy on its partitions when B joins.
    eventually("A to be handling", Duration::from_secs(60), || {
        log.len() >= 3
    })
    .await;
    let b = start(
        &broker_b,
        vec![slow_worker(&topic, &group, "b", log.clone())],
        6,
    )
    .await;
    publish(&p, &topic, N / 2..N).await;

    eventually("every message handled", Duration::from_secs(120), || {
        log.all()
            .into_iter()
            .map(|(m, _)| m)
            .collect::<HashSet<_>>()
            .len()
            == N
    })
    .await;
    // A second reading, if any, is handled before the group's commits reach the end of every
    // partition (a fresh topic: the committed offsets add up to the messages read), and
    // shutting both members down lets what they still run finish.
    eventually_async(
        "the group's commits to cover every message",
        Duration::from_secs(60),
        || async {
            let now = committed(&group, &topic, PARTITIONS as i32).await;
            now.iter().map(|o| o.unwrap_or(0)).sum::<i64>() == N as i64
        },
    )
    .await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    let mut by: HashMap<String, Vec<&'static str>> = HashMap::new();
    for (m, member) in log.all() {
        by.entry(m).or_default().push(member);
    }
    let twice: Vec<_> = by.iter().filter(|(_, members)| members.len() > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert!(
        log.all().iter().any(|(_, member)| *member == "b"),
        "B never got partitions"
    );
}
