use messaging_core::prelude::*;

#[event(topic = "user-events")]
async fn no_name() -> Result<String, String> {
    Ok("id".into())
}

#[event("user.created")]
async fn no_topic() -> Result<String, String> {
    Ok("id".into())
}

#[event(user.created, topic = "user-events")]
async fn name_not_a_string() -> Result<String, String> {
    Ok("id".into())
}

#[event("user.created", topic = ["a", "b"])]
async fn two_topics() -> Result<String, String> {
    Ok("id".into())
}

fn main() {}
