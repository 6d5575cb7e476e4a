//! The consumer binary of the crash tests of issue 24 (`tests/tests/crash_after_success.rs`): the
//! real `consumer` command line with every broker and store linked and two handlers declared
//! with the macros, each appending a line to the file `CRASH_LOG` when it runs:
//!
//! - `charge` (topic `crash.orders`, idempotent): `charge <body>`; done-when 4.
//! - `aggregate` (topic `crash.moods`, `publish_to = "crash.context"`, retried every 50 ms):
//!   `aggregate <user>`, then its result is published; done-when 3.
//!
//! The tests give each run topics of its own with `MESSAGING_TOPIC_CRASH_ORDERS` (and
//! `…_MOODS`, `…_CONTEXT`). With `MESSAGING_IDEMPOTENCY_STORE=stall-after-complete` the keys
//! are kept in the store `CRASH_INNER_STORE` (`redis` or `postgres`, at
//! `MESSAGING_IDEMPOTENCY_URL`), and once a key is marked done the attempt stops there for
//! good, before the message is acknowledged: it prints `stalled after marking … done`, and
//! the test SIGKILLs the process, which is a crash between the handler's success and the
//! acknowledgement.
//!
//! Run with: CRASH_LOG=/tmp/runs MESSAGING_BACKEND=redis \
//!     cargo run -p messaging-tests --all-features --bin crash_consumer -- --group g

use std::fs::File;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::BoxFuture;
use messaging_core::idempotency::{
    Begin, IdempotencyError, IdempotencyStore, IdempotencyStoreFactory, connect_store,
};
use messaging_core::prelude::*;
use messaging_kafka as _;
use messaging_postgres as _;
use messaging_rabbit as _;
use messaging_redis as _;
use serde::{Deserialize, Serialize};

/// The file each run is recorded in, one line per run, each line in one `write`.
struct RunLog(Mutex<File>);

impl RunLog {
    fn open() -> Self {
        let path = std::env::var("CRASH_LOG").expect("CRASH_LOG is set");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        Self(Mutex::new(file))
    }

    fn record(&self, line: &str) -> Result<(), HandlerError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| HandlerError::retryable(format!("recording failed: {e}")))
    }
}

#[message_handler(topic = "crash.orders", idempotent)]
async fn charge(order: serde_json::Value, log: State<RunLog>) -> Result<(), HandlerError> {
    log.record(&format!("charge {order}"))
}

#[derive(Deserialize)]
struct Mood {
    user: String,
}

#[derive(Serialize)]
struct Context {
    user: String,
    entries: u32,
}

#[message_handler(
    topic = "crash.moods",
    publish_to = "crash.context",
    max_retries = 10000,
    retry_delay = "50ms"
)]
async fn aggregate(mood: Mood, log: State<RunLog>) -> Result<Context, HandlerError> {
    log.record(&format!("aggregate {}", mood.user))?;
    Ok(Context {
        user: mood.user,
        entries: 1,
    })
}

/// A store that marks keys done in the store `CRASH_INNER_STORE` and then never returns.
struct StallAfterComplete(Arc<dyn IdempotencyStore>);

impl IdempotencyStore for StallAfterComplete {
    fn name(&self) -> &'static str {
        "stall-after-complete"
    }

    fn try_begin<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, IdempotencyError>> {
        self.0.try_begin(key, owner, lease)
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        Box::pin(async move {
            self.0.complete(key, owner, ttl).await?;
            eprintln!("stalled after marking {key} done");
            std::future::pending().await
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<(), IdempotencyError>> {
        self.0.release(key, owner)
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        self.0.renew(key, owner, lease)
    }
}

inventory::submit! {
    IdempotencyStoreFactory {
        name: "stall-after-complete",
        // The store it wraps asks for one.
        url_example: None,
        connect: |config| {
            let mut inner = config.clone();
            Box::pin(async move {
                inner.store = std::env::var("CRASH_INNER_STORE")
                    .expect("CRASH_INNER_STORE names the store that keeps the keys");
                let store = connect_store(&inner)
                    .await
                    .map_err(|e| IdempotencyError::new("stall-after-complete", e))?;
                Ok(Arc::new(StallAfterComplete(store)) as Arc<dyn IdempotencyStore>)
            })
        },
    }
}

fn main() -> ExitCode {
    messaging_core::cli::main_with(|runtime| runtime.state(RunLog::open()))
}
