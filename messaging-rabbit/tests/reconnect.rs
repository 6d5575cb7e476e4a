//! DESIGN §5 on RabbitMQ: while 10 000 messages flow through the real runtime, every
//! connection of this test is closed from the server side (`rabbitmqctl close_connection`,
//! by connection name, so other tests' connections stay open). The consumer and the
//! publisher reconnect by themselves and every message is handled at least once.
//! Needs RabbitMQ on 127.0.0.1:5672 and `rabbitmqctl`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Names, close_connections, connection_pids, eventually};
use messaging_core::{Broker, Config, HandlerSpec, Invocation, OutgoingMessage, Runtime};

const N: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_when_all_connections_are_closed_mid_flow() {
    let n = Names::new("reconnect");
    let broker = n.broker().await;
    let topic = n.topic("flow");
    let group = n.group("flow");

    let handled: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let deliveries = Arc::new(AtomicUsize::new(0));
    let handler = HandlerSpec::new("reconnect_flow", [topic.clone()], {
        let (handled, deliveries) = (Arc::clone(&handled), Arc::clone(&deliveries));
        move |inv: Invocation| {
            let (handled, deliveries) = (Arc::clone(&handled), Arc::clone(&deliveries));
            async move {
                let i: usize = std::str::from_utf8(&inv.message.payload)?.parse()?;
                deliveries.fetch_add(1, Ordering::Relaxed);
                handled.lock().unwrap().insert(i);
                Ok(())
            }
        }
    })
    .group(&group);
    let runtime = Runtime::builder()
        .broker(broker.clone().into_dyn())
        .config(Config::default().with_source("reconnect-test"))
        .without_registered()
        .install_global_producer(false)
        .concurrency(4)
        .handler(handler)
        .start()
        .await
        .expect("runtime starts");

    // One publish at a time, each awaiting its confirm: the flow lasts several seconds, so it
    // is still going while rabbitmqctl (a second or two per call) closes the connections.
    // A publish that fails is sent again, as an application would.
    let publish_failures = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (broker, topic, failures) =
            (broker.clone(), topic.clone(), Arc::clone(&publish_failures));
        async move {
            for i in 0..N {
                while let Err(error) = broker
                    .publish(OutgoingMessage::new(&topic, i.to_string()))
                    .await
                {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("publish {i} failed, sending again: {error}");
                    // The application's pause before sending again, not a wait.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });

    let count = || handled.lock().unwrap().len();
    eventually("the first 1 000 messages", Duration::from_secs(60), || {
        count() >= 1_000
    })
    .await;
    let closed = close_connections(&n.connection()).await;
    let handled_when_closed = count();
    assert_eq!(
        closed.len(),
        2,
        "the publisher's and the consumer's connections: {closed:?}"
    );
    assert!(
        handled_when_closed < N,
        "the connections were closed after the flow ended"
    );

    publisher.await.expect("every message published");
    eventually(
        &format!("all {N} messages handled"),
        Duration::from_secs(120),
        || count() == N,
    )
    .await;

    let reopened = connection_pids(&n.connection());
    assert_eq!(
        reopened.len(),
        2,
        "a new publisher and consumer connection: {reopened:?}"
    );
    assert!(
        reopened.iter().all(|pid| !closed.contains(pid)),
        "new connections, not the closed ones"
    );
    let redelivered = deliveries.load(Ordering::Relaxed) - N;
    eprintln!(
        "closed {closed:?} at {handled_when_closed} handled; {redelivered} redeliveries; {} failed publishes sent again",
        publish_failures.load(Ordering::Relaxed)
    );

    runtime.shutdown().await.unwrap();
    broker
        .delete_queue(&broker.group_queue(&group).unwrap())
        .await
        .unwrap();
    broker
        .delete_queue(&broker.topic_queue(&format!("{topic}.dlq")).unwrap())
        .await
        .unwrap();
}
