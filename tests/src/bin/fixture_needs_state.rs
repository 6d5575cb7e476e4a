//! A consumer binary whose one handler needs `State<Db>` and registers none, for the
//! process-level tests (`tests/tests/cli.rs`): `consumer check` must report it.

use messaging_core::prelude::*;

/// A connection pool the binary forgets to register.
struct Db;

#[message_handler(topic = "fixture.needs-state")]
async fn needs_db(_order: serde_json::Value, _db: State<Db>) -> anyhow::Result<()> {
    Ok(())
}

fn main() -> std::process::ExitCode {
    messaging_core::cli::main()
}
