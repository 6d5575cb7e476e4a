//! The HTTP API of the example service on 127.0.0.1:3000 (API_ADDR to change it). Registering a
//! user fires `user.created` in the background; placing an order publishes `orders.created`.
//!
//! Run with: MESSAGING_BACKEND=redis cargo run -p messaging-examples --bin api
//! then:     curl -s -XPOST localhost:3000/orders -H 'content-type: application/json' -d '{"user_id":1,"total":42.5}'

use std::net::SocketAddr;

use messaging_core::prelude::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    messaging_examples::link_brokers();
    messaging_examples::api::guardian_timeout().map_err(anyhow::Error::msg)?;
    let addr: SocketAddr = std::env::var("API_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".to_owned())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "api listening on http://{addr} (backend {})",
        messaging_core::current_config().backend
    );
    axum::serve(listener, messaging_examples::api::router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Events fired by `#[event]` handlers that are still on their way.
    get_producer().flush().await?;
    Ok(())
}
