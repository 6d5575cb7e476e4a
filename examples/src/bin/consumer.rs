//! The consumer: runs every handler of the example service, or those of the topics named with
//! `--topic`, on the backend chosen by MESSAGING_BACKEND.
//!
//! Run with: MESSAGING_BACKEND=redis cargo run -p messaging-examples --bin example-consumer -- --topic orders.created

use std::process::ExitCode;

fn main() -> ExitCode {
    messaging_examples::link_brokers();
    messaging_core::cli::main_with(messaging_examples::with_state)
}
