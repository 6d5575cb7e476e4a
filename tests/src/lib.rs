//! The conformance suite: one set of test bodies, run against every broker.
//!
//! A broker's test file is one line plus its connect function:
//!
//! ```ignore
//! fn connect() -> messaging_tests::ConnectFuture {
//!     Box::pin(async { messaging_redis::RedisBroker::connect_url("redis://127.0.0.1:6379/0").await.unwrap().into_dyn() })
//! }
//! messaging_tests::suite!(connect);
//! ```
//!
//! `connect` must panic when the broker is unreachable: a broker test fails, it never skips.
//! Every test uses fresh topic and group names, so runs do not see each other's messages.
#![forbid(unsafe_code)]

use std::sync::Arc;

use messaging_core::{BoxFuture, Broker};

mod suite;
pub use suite::*;

pub mod crash;
pub mod hostile;
pub mod idempotency;
pub mod lag;
#[cfg(feature = "otel")]
pub mod otel;
pub mod process;
pub mod reliability;
pub use hostile::{ConnectRaw, Limits, RawMessage, RawSend};

/// A DLQ record of a message that was on `topic`, in the wire format of DESIGN §3, as
/// another service might have written it.
pub fn dlq_record(topic: &str, body: &str) -> messaging_core::DeadLetterRecord {
    let at = "2026-12-02T00:00:00Z";
    serde_json::from_value(serde_json::json!({
        "version": 1,
        "original": {"topic": topic, "key": null, "payload": body, "headers": {}, "position": "offset 0"},
        "error": {"kind": "handler", "message": "failed"},
        "attempts": 1, "first_failure_at": at, "last_failure_at": at,
        "handler": "h", "group": "g", "source": "test", "dead_lettered_at": at,
    }))
    .expect("a DLQ record in the wire format")
}

/// What a broker's `connect` function returns: a new client connection, as a new process would
/// open it.
pub type ConnectFuture = BoxFuture<'static, Arc<dyn Broker>>;

/// A broker's connect function.
pub type Connect = fn() -> ConnectFuture;

/// Expands to one `#[tokio::test]` per conformance test, each calling the shared body with
/// `$connect`.
#[macro_export]
macro_rules! suite {
    ($connect:path) => {
        $crate::suite!(@each $connect;
            delivers_to_a_message_handler,
            delivers_enveloped_events_by_name,
            acknowledges_unknown_events_without_retrying,
            one_group_reads_several_topics,
            each_group_gets_every_message,
            instances_of_a_group_share_without_duplicates,
            keeps_order_per_key,
            retries_then_succeeds_with_declared_delays,
            dead_letters_after_retries_with_full_record,
            dead_letters_bad_payloads_at_once,
            redelivers_what_a_dropped_consumer_held,
            graceful_shutdown_finishes_in_flight_work,
            replay_ends_while_the_handler_still_fails,
            a_failing_key_holds_back_only_itself,
            retry_topics_let_the_key_go_on,
            request_reply_reaches_each_requesting_instance,
            streamed_replies_arrive_in_order,
        );
    };
    (@each $connect:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name($connect).await
            }
        )*
    };
}
