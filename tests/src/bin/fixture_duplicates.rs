//! A consumer binary with a topology problem, for `consumer check`: two handlers of one group
//! take the same topic.

use std::process::ExitCode;

use messaging_core::prelude::*;

#[message_handler(topic = "fixture.orders", group = "billing")]
async fn charge(_order: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

#[message_handler(topic = "fixture.orders", group = "billing")]
async fn charge_again(_order: serde_json::Value) -> anyhow::Result<()> {
    Ok(())
}

fn main() -> ExitCode {
    messaging_core::cli::main()
}
