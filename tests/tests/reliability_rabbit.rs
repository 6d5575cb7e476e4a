//! Reliability on RabbitMQ (issue 7): consumer crashes and horizontal scale, on the shared
//! server (127.0.0.1:5672, guest/guest; `scripts/start-rabbitmq.sh`). The group's queue is
//! declared before publishing (a topic exchange drops what no queue is bound to yet); a
//! killed consumer's unacknowledged messages go back to the queue when its connection closes.
//! The broker restart runs in `reliability_rabbit_restart`, a test binary of its own. Fails,
//! never skips, when RabbitMQ is missing.
//!
//! Run with: cargo test -p messaging-tests --all-features --test reliability_rabbit -- --nocapture
//! (`MESSAGING_LONG_TESTS=1` for 100 000 messages).

use messaging_rabbit::{RabbitBroker, RabbitOptions};
use messaging_tests::reliability::{self, Backend, Prepare};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BINARY: &str = env!("CARGO_BIN_EXE_reliability_consumer");

async fn backend() -> Backend {
    let options = RabbitOptions::new(URL).connection_name("reliability publisher");
    let publisher = RabbitBroker::connect(options).await.unwrap_or_else(|e| {
        panic!("RabbitMQ is not reachable at {URL} (run scripts/start-rabbitmq.sh): {e}")
    });
    Backend {
        name: "rabbitmq",
        binary: BINARY,
        env: vec![
            ("MESSAGING_BACKEND".into(), "rabbitmq".into()),
            ("RABBITMQ_URL".into(), URL.into()),
        ],
        publisher: publisher.into_dyn(),
        prepare: Prepare::Subscribe,
        cleanup: reliability::delete_rabbit_queues,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_three_sigkills_lose_nothing() {
    reliability::crash(&backend().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_share_and_survive_losing_one() {
    reliability::scale(&backend().await).await;
}
