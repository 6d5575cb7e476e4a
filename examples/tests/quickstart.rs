//! The quick start shows what the README promises: a handled event, a retry and a DLQ record
//! (issue 6, done-when 5), running the built binary as `cargo run` does.

use std::process::Command;

#[test]
fn quickstart_shows_each_pattern_it_promises() {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .env_remove("MESSAGING_BACKEND")
        .output()
        .expect("the quick start runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "[notifications] welcome mail to ada@example.com",
        "payment provider timed out; will retry",
        "attempt 2",
        "[payments] order 2 paid",
        "[ingest] user u-1 stored",
        "[analytics] metrics for beat b-1",
        "[dlq] orders.created.dlq:",
        "\"kind\": \"handler\"",
        "amount 250000 is over the 10000 limit",
        "[http] POST /guardian/advice",
        "\"guardian_type\":\"mental\",\"response\":\"You asked the mental guardian",
        "data: Sleep at regular hours this week.",
        "event: end",
        "[vectorize] user u-1",
        "[metrics] duplicates of orders.created skipped by payments: 1",
    ] {
        assert!(
            stdout.contains(expected),
            "quick start output lacks {expected:?}:\n{stdout}"
        );
    }
}
