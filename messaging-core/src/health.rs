//! `GET /health` and `GET /metrics` for the consumer (`--health-addr`), on axum.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{SecondsFormat, Utc};
use tokio_util::sync::CancellationToken;

use crate::broker::ConnectionState;
use crate::metrics::metrics;

/// What `/health` reports.
#[derive(Debug)]
pub struct Health {
    /// The backend's name.
    pub backend: String,
    /// `false` for the `disabled` backend.
    pub enabled: bool,
    /// Handlers this process runs.
    pub handlers: usize,
    /// The connection loop's state.
    pub connection: Arc<ConnectionState>,
}

/// The routes.
pub fn router(health: Arc<Health>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(health)
}

async fn health_handler(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let c = &health.connection;
    let connected = c.is_connected();
    let status = match (connected, c.in_cooldown()) {
        (true, _) => "connected",
        (false, true) => "cooling_down",
        (false, false) => "connecting",
    };
    let body = serde_json::json!({
        "broker": health.backend,
        "status": status,
        "in_cooldown": c.in_cooldown(),
        "retry_count": c.retry_count(),
        "enabled": health.enabled,
        "handlers": health.handlers,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    let code = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics_handler() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

/// Serves the routes on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let server = axum::serve(listener, router(health))
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = server.await {
            tracing::error!(%error, "health server failed");
        }
    });
    Ok(bound)
}
