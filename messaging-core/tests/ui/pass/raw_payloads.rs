// Raw bodies: `Bytes`, the whole `Message`; no JSON involved. `Vec<u8>` is not raw: it is
// JSON like any other `Deserialize` type (an array of numbers).
use bytes::Bytes;
use messaging_core::Message;
use messaging_core::prelude::*;

#[message_handler(topic = "images.raw")]
async fn bytes_body(body: Bytes) -> anyhow::Result<()> {
    let _ = body.len();
    Ok(())
}

#[message_handler(topic = "images.raw", group = "vec")]
async fn vec_body(body: Vec<u8>) -> anyhow::Result<()> {
    let _ = body.len();
    Ok(())
}

#[message_handler(topic = "images.raw", group = "message")]
async fn whole_message(message: Message) -> anyhow::Result<()> {
    let _ = (message.topic, message.key, message.headers);
    Ok(())
}

// A `Vec` of anything is JSON.
#[message_handler(topic = "numbers")]
async fn numbers(body: Vec<u64>) -> anyhow::Result<()> {
    let _ = body.iter().sum::<u64>();
    Ok(())
}

fn main() {}
