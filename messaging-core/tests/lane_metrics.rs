//! Per-handler counters are sharded by lane (each lane writes its own with a plain load and
//! store). Many lanes on two worker threads must still add up to exactly what happened, in
//! the accessors and in the Prometheus text.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::metrics::metrics;
use messaging_core::{
    Config, HandlerError, HandlerSpec, MemoryBroker, OutgoingMessage, RetryPolicy, Runtime,
};

const MESSAGES: usize = 5_000;
const TOPIC: &str = "lane-metrics.orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_of_many_lanes_add_up() {
    let broker = MemoryBroker::new();
    // Every tenth message fails its first attempt, once.
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let handler = HandlerSpec::new("count_lanes", [TOPIC], {
        let failed_once = Arc::clone(&failed_once);
        move |inv| {
            let n: usize = std::str::from_utf8(&inv.message.payload)
                .unwrap()
                .parse()
                .unwrap();
            let fail = n.is_multiple_of(10) && failed_once.lock().unwrap().insert(n);
            async move {
                if fail {
                    Err(HandlerError::retryable("first attempt fails"))
                } else {
                    Ok(())
                }
            }
        }
    })
    .retry(RetryPolicy::new(2, Duration::from_millis(1)));
    let runtime = Runtime::builder()
        .config(Config::default())
        .broker(Arc::new(broker.clone()))
        .without_registered()
        .install_global_producer(false)
        .concurrency(8)
        .handler(handler)
        .start()
        .await
        .unwrap();
    broker.append_all((0..MESSAGES).map(|n| {
        OutgoingMessage::new(TOPIC, n.to_string().into_bytes()).with_key(format!("k{}", n % 64))
    }));
    tokio::time::timeout(Duration::from_secs(60), broker.wait_idle())
        .await
        .expect("every message handled");

    let retried = MESSAGES / 10;
    let counters = runtime.handler_metrics("count_lanes");
    assert_eq!(counters.len(), 1);
    let m = &counters[0];
    assert_eq!(m.succeeded(), MESSAGES as u64);
    assert_eq!(m.attempts(), (MESSAGES + retried) as u64);
    assert_eq!(m.retried(), retried as u64);
    assert_eq!(m.dead_lettered(), 0);

    let text = metrics().render();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix) && l.contains("handler=\"count_lanes\""))
            .unwrap_or_else(|| panic!("no {prefix} line for count_lanes in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        line(
            "messaging_handled_total{topic=\"lane-metrics.orders\",handler=\"count_lanes\",outcome=\"ok\"}"
        ),
        MESSAGES.to_string()
    );
    assert_eq!(
        line("messaging_handler_duration_seconds_count"),
        (MESSAGES + retried).to_string(),
        "one latency observation per attempt, whichever lane made it"
    );
    runtime.shutdown().await.unwrap();
}
