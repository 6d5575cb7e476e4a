//! An example service on `messaging`, modelled on what our first users run: users register
//! through an HTTP API (`#[event]` publishes `user.created`), orders are paid by a handler with
//! retries and a dead-letter queue, and a consumer sends notifications by event name.
//!
//! Run the quick start (no server needed): `cargo run -p messaging-examples --bin quickstart`

pub mod api;
pub mod domain;
pub mod handlers;
