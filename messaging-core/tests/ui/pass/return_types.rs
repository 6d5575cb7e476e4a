// A handler returns `()` or `Result<_, E>` with `E: Into<HandlerError>`.
use messaging_core::prelude::*;

#[message_handler(topic = "t.unit")]
async fn unit(_: serde_json::Value) {}

#[message_handler(topic = "t.explicit_unit")]
async fn explicit_unit(_: serde_json::Value) -> () {}

#[message_handler(topic = "t.handler_error")]
async fn handler_error(msg: serde_json::Value) -> Result<(), HandlerError> {
    if msg.is_null() {
        return Err(HandlerError::permanent("null body"));
    }
    Ok(())
}

#[message_handler(topic = "t.anyhow")]
async fn with_anyhow(_: serde_json::Value) -> anyhow::Result<()> {
    anyhow::bail!("always fails")
}

#[message_handler(topic = "t.io")]
async fn io_error(_: serde_json::Value) -> Result<u64, std::io::Error> {
    Ok(1)
}

#[message_handler(topic = "t.string")]
async fn string_error(_: serde_json::Value) -> Result<(), String> {
    Err("plain text".to_owned())
}

fn main() {}
