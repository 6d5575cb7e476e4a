//! The consumer binary of the reliability tests (`tests/tests/reliability_*.rs`, issue 7): the
//! real `consumer` command line (`messaging_core::cli::main_with`) with every broker linked and
//! one handler built in code that records what it handled.
//!
//! - `RELIABILITY_TOPIC`: the topic of the handler `record` (its group is `--group`);
//! - `RELIABILITY_LOG`: the file it appends `<body>\n` to, one line per handled message, in
//!   one `write` on a file opened with `O_APPEND` before the handler returns `Ok`: a line in
//!   the file is a message that was handled, whatever happens to the process afterwards;
//! - `RELIABILITY_SLOW_MS`: optional, how long each message takes before it is recorded.
//!
//! Run with: RELIABILITY_TOPIC=t RELIABILITY_LOG=/tmp/l MESSAGING_BACKEND=redis \
//!     cargo run -p messaging-tests --all-features --bin reliability_consumer -- --group g

use std::fs::File;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::{HandlerError, HandlerSpec, Invocation};
use messaging_kafka as _;
use messaging_rabbit as _;
use messaging_redis as _;

fn main() -> ExitCode {
    let topic = std::env::var("RELIABILITY_TOPIC").expect("RELIABILITY_TOPIC is set");
    let path = std::env::var("RELIABILITY_LOG").expect("RELIABILITY_LOG is set");
    let slow = std::env::var("RELIABILITY_SLOW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // The lock only keeps two lines from being built into one buffer at once; each line
    // still reaches the file in a single `write` (an unbuffered `File`).
    let log = Arc::new(Mutex::new(log));
    let record = HandlerSpec::new("record", [topic], move |inv: Invocation| {
        let log = Arc::clone(&log);
        async move {
            if let Some(slow) = slow {
                tokio::time::sleep(slow).await;
            }
            let mut line = inv.message.payload.to_vec();
            line.push(b'\n');
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(&line)
                .map_err(|e| HandlerError::retryable(format!("recording failed: {e}")))
        }
    });
    messaging_core::cli::main_with(|runtime| runtime.without_registered().handler(record))
}
