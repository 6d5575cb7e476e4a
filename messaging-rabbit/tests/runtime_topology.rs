//! The runtime on RabbitMQ, as the broker sees it: `basic.qos` follows the runtime's
//! concurrency (never fewer unacknowledged deliveries than handlers running at once), and a
//! group queue that disappears (deleted, or lost by a broker that kept nothing) is declared
//! and bound again by the running consumer, which then goes on handling messages.
//! Needs RabbitMQ on 127.0.0.1:5672 and `rabbitmqctl`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Names, eventually, rabbitmqctl};
use messaging_core::{Broker, Config, HandlerSpec, Invocation, OutgoingMessage, Runtime};
use messaging_rabbit::RabbitBroker;

/// The prefetch counts of the consumers on `queue`.
fn prefetch_counts(queue: &str) -> Vec<u32> {
    rabbitmqctl(&[
        "-q",
        "list_consumers",
        "--no-table-headers",
        "queue_name",
        "prefetch_count",
    ])
    .lines()
    .filter_map(|line| {
        let (name, count) = line.split_once('\t')?;
        (name.trim() == queue).then(|| count.trim().parse().ok())?
    })
    .collect()
}

fn queue_exists(queue: &str) -> bool {
    rabbitmqctl(&["-q", "list_queues", "--no-table-headers", "name"])
        .lines()
        .any(|line| line.trim() == queue)
}

async fn start(
    broker: &RabbitBroker,
    topic: &str,
    group: &str,
    concurrency: usize,
    handled: &Arc<AtomicUsize>,
) -> Runtime {
    let handler = HandlerSpec::new("count", [topic.to_owned()], {
        let handled = Arc::clone(handled);
        move |_inv: Invocation| {
            handled.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }
    })
    .group(group);
    Runtime::builder()
        .broker(broker.clone().into_dyn())
        .config(Config::default())
        .without_registered()
        .install_global_producer(false)
        .concurrency(concurrency)
        .handler(handler)
        .start()
        .await
        .expect("runtime starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_is_never_below_the_concurrency() {
    let n = Names::new("prefetch");
    let broker = n.broker().await;
    let handled = Arc::new(AtomicUsize::new(0));
    for (concurrency, expected) in [(4, 256), (300, 300)] {
        let topic = n.topic(&format!("c{concurrency}"));
        let group = n.group(&format!("c{concurrency}"));
        let runtime = start(&broker, &topic, &group, concurrency, &handled).await;
        let queue = broker.group_queue(&group).unwrap();
        // rabbitmqctl may not list a consumer that has just started yet.
        let mut counts = prefetch_counts(&queue);
        for _ in 0..50 {
            if !counts.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            counts = prefetch_counts(&queue);
        }
        assert_eq!(
            counts,
            [expected],
            "concurrency {concurrency}: the batch size (256) or the concurrency, whichever is larger"
        );
        runtime.shutdown().await.unwrap();
        broker.delete_queue(&queue).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_queue_is_declared_again_and_consumption_goes_on() {
    let n = Names::new("redeclare");
    let broker = n.broker().await;
    let topic = n.topic("orders");
    let group = n.group("orders");
    let handled = Arc::new(AtomicUsize::new(0));
    let runtime = start(&broker, &topic, &group, 4, &handled).await;
    let queue = broker.group_queue(&group).unwrap();

    broker
        .publish(OutgoingMessage::new(&topic, b"before".to_vec()))
        .await
        .unwrap();
    eventually("the first message", Duration::from_secs(20), || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;

    // Deleting the queue cancels its consumer; the consumer declares it (and its binding)
    // again, with a new `basic.consume`.
    rabbitmqctl(&["-q", "delete_queue", &queue]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while prefetch_counts(&queue).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue {queue} was not declared and consumed again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(queue_exists(&queue));
    for i in 0..10 {
        broker
            .publish(OutgoingMessage::new(
                &topic,
                format!("after {i}").into_bytes(),
            ))
            .await
            .unwrap();
    }
    eventually(
        "the messages published after",
        Duration::from_secs(20),
        || handled.load(Ordering::SeqCst) == 11,
    )
    .await;
    runtime.shutdown().await.unwrap();
    broker.delete_queue(&queue).await.unwrap();
}
