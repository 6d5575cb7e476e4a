//! A consumer binary for the process-level tests (`tests/tests/cli.rs`): handlers built in code
//! on topics under `FIXTURE_PREFIX`, writing what they do to the file `FIXTURE_LOG`.
//!
//! - `<prefix>.record`, `<prefix>.other`: log `record <body>` / `other <body>`;
//! - `<prefix>.slow`: logs `start <body>`, sleeps `FIXTURE_SLOW_MS` (default 1500), logs `done <body>`;
//! - `<prefix>.fixable`: fails (1 retry, then the DLQ) until the file `FIXTURE_FIXED` exists,
//!   then logs `fixed <body>`.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use messaging_core::{HandlerError, HandlerSpec, Invocation, RetryPolicy};

fn log(line: String) {
    let path = std::env::var("FIXTURE_LOG").expect("FIXTURE_LOG is set");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log opens");
    writeln!(file, "{line}").expect("log is written");
}

fn body(inv: &Invocation) -> String {
    String::from_utf8_lossy(&inv.message.payload).into_owned()
}

fn main() -> ExitCode {
    use messaging_redis as _;
    // Linked when built with them, for the configuration tests of every broker.
    #[cfg(feature = "kafka")]
    use messaging_kafka as _;
    #[cfg(feature = "rabbitmq")]
    use messaging_rabbit as _;
    let prefix = std::env::var("FIXTURE_PREFIX").unwrap_or_else(|_| "fixture".to_owned());
    let slow_ms: u64 = std::env::var("FIXTURE_SLOW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let topic = |name: &str| format!("{prefix}.{name}");
    let simple = |name: &'static str| {
        HandlerSpec::new(name, [topic(name)], move |inv: Invocation| async move {
            log(format!("{name} {}", body(&inv)));
            Ok(())
        })
    };
    let slow = HandlerSpec::new("slow", [topic("slow")], move |inv: Invocation| async move {
        log(format!("start {}", body(&inv)));
        tokio::time::sleep(Duration::from_millis(slow_ms)).await;
        log(format!("done {}", body(&inv)));
        Ok(())
    });
    let fixable = HandlerSpec::new(
        "fixable",
        [topic("fixable")],
        |inv: Invocation| async move {
            let fixed = std::env::var("FIXTURE_FIXED")
                .is_ok_and(|path| std::path::Path::new(&path).exists());
            if !fixed {
                return Err(HandlerError::retryable("not fixed yet"));
            }
            log(format!("fixed {}", body(&inv)));
            Ok(())
        },
    )
    .retry(RetryPolicy::new(1, Duration::from_millis(100)));
    messaging_core::cli::main_with(|runtime| {
        runtime
            .handler(simple("record"))
            .handler(simple("other"))
            .handler(slow)
            .handler(fixable)
    })
}
