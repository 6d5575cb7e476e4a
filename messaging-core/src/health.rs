//! `GET /health`, `GET /health/live`, `GET /health/ready` and `GET /metrics` for the
//! consumer (`--health-addr`), on axum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// The connection loop's state, and each group's readiness.
    pub connection: Arc<ConnectionState>,
    /// How long a group may fail to fetch, or to write DLQ records, before it counts as
    /// not ready.
    pub stall_after: Duration,
    /// `/health` lists the groups' topics and partitions lagging above this many messages
    /// (`MESSAGING_LAG_ALERT`).
    pub lag_alert: u64,
}

impl Health {
    /// Why the service is not ready, one line each; empty when it is: connected, and every
    /// group consuming with nothing failing for longer than `stall_after`.
    pub fn not_ready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.enabled {
            return reasons;
        }
        if !self.connection.is_connected() {
            reasons.push("broker: not connected".to_owned());
        }
        let groups = self.connection.groups();
        if groups.is_empty() && self.handlers > 0 {
            reasons.push("no group subscribed yet".to_owned());
        }
        for (group, readiness) in &groups {
            if !readiness.is_ready() {
                // Said at once: a member that stopped consuming (a dead client being
                // replaced) is not ready whatever `stall_after` is.
                let why = readiness.problems_older_than(Duration::ZERO);
                reasons.push(if why.is_empty() {
                    format!("group {group}: not consuming yet (joining)")
                } else {
                    format!("group {group}: not consuming: {}", why.join("; "))
                });
            }
        }
        reasons.extend(self.stalled());
        reasons
    }

    /// The groups' topics (and partitions) more than `lag_alert` messages behind, as
    /// `group/topic` or `group/topic/partition`, from the last lag reading.
    ///
    /// Lagging does not make the service unready, nor `/health` fail: a backlog is load,
    /// not a fault of this instance, and an instance taken out of rotation (or a rollout
    /// that waits for readiness) drains nothing. Alert on it (`messaging_consumer_lag`).
    pub fn lagging(&self) -> Vec<String> {
        let groups = self.connection.groups();
        crate::lag::lagging(self.lag_alert)
            .into_iter()
            // Only what this process consumes: the gauges are the process's.
            .filter(|r| groups.iter().any(|(g, _)| *g == r.group))
            .map(|r| match r.partition {
                Some(p) => format!("{}/{}/{p}", r.group, r.topic),
                None => format!("{}/{}", r.group, r.topic),
            })
            .collect()
    }

    /// The groups that have failed to fetch, or to write DLQ records, for longer than
    /// `stall_after`, with why.
    pub fn stalled(&self) -> Vec<String> {
        self.connection
            .groups()
            .iter()
            .flat_map(|(group, readiness)| {
                readiness
                    .problems_older_than(self.stall_after)
                    .into_iter()
                    .map(move |problem| format!("group {group}: {problem}"))
            })
            .collect()
    }
}

/// The routes.
pub fn router(health: Arc<Health>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health_handler))
        .route("/health/live", get(live_handler))
        .route("/health/ready", get(ready_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(health)
}

async fn health_handler(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let c = &health.connection;
    let connected = c.is_connected();
    let not_ready = health.not_ready();
    let stalled = !health.stalled().is_empty();
    let lagging = health.lagging();
    let status = match (connected, c.in_cooldown()) {
        (true, _) if stalled => "stalled",
        (true, _) if !lagging.is_empty() => "lagging",
        (true, _) => "connected",
        (false, true) => "cooling_down",
        (false, false) => "connecting",
    };
    let body = serde_json::json!({
        "broker": health.backend,
        "status": status,
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "lagging": lagging,
        "in_cooldown": c.in_cooldown(),
        "retry_count": c.retry_count(),
        "enabled": health.enabled,
        "handlers": health.handlers,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    let code = if connected && !stalled {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// 200 while the process serves at all.
async fn live_handler() -> impl IntoResponse {
    Json(serde_json::json!({"status": "live"}))
}

/// 200 only when every group is consuming and nothing has been failing for long; else 503
/// with the reasons.
async fn ready_handler(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let not_ready = health.not_ready();
    let code = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({"ready": not_ready.is_empty(), "not_ready": not_ready})),
    )
}

/// The exporter's rendering: every metric of the process's recorder, ours included. When
/// the service installed a recorder of its own before ours could be, ours alone.
async fn metrics_handler() -> impl IntoResponse {
    let text = match crate::metrics::prometheus_handle() {
        Some(handle) => handle.render(),
        None => metrics().render(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Readiness;

    fn health(stall_after: Duration) -> Health {
        let connection = Arc::new(ConnectionState::default());
        connection.set_connected(true);
        Health {
            backend: "test".into(),
            enabled: true,
            handlers: 1,
            connection,
            stall_after,
            lag_alert: 1000,
        }
    }

    #[test]
    fn lagging_lists_this_process_groups_above_the_threshold_and_stays_ready() {
        let h = health(Duration::ZERO);
        h.connection.set_group("health-lag", Readiness::ready());
        let row = |topic: &str, partition, lag| crate::lag::LagRow {
            group: "health-lag".into(),
            topic: topic.into(),
            partition,
            lag,
            pending: None,
        };
        crate::lag::record(
            "health-lag",
            &[row("orders", Some(0), 1000), row("orders", Some(1), 1001)],
        );
        crate::lag::record(
            "health-lag-elsewhere",
            &[crate::lag::LagRow {
                group: "health-lag-elsewhere".into(),
                ..row("orders", None, 5000)
            }],
        );
        assert_eq!(h.lagging(), ["health-lag/orders/1"]);
        assert!(
            h.not_ready().is_empty(),
            "a backlog is not a reason to be unready"
        );
        crate::lag::forget("health-lag");
        crate::lag::forget("health-lag-elsewhere");
        assert!(h.lagging().is_empty());
    }

    #[test]
    fn ready_once_every_group_consumes_and_nothing_fails_for_long() {
        let h = health(Duration::ZERO);
        assert_eq!(h.not_ready(), ["no group subscribed yet"]);
        let joining = Readiness::pending();
        h.connection.set_group("billing", joining.clone());
        assert!(h.not_ready()[0].contains("billing: not consuming yet"));
        joining.set_ready(true);
        assert!(h.not_ready().is_empty());
        joining.report("dlq", "publish refused");
        let stalled = h.stalled();
        assert_eq!(stalled.len(), 1);
        assert!(stalled[0].contains("dlq failing for") && stalled[0].contains("publish refused"));
        joining.clear("dlq");
        assert!(h.not_ready().is_empty());
        // Under the threshold a problem is not yet a stall.
        let patient = health(Duration::from_secs(3600));
        let readiness = Readiness::ready();
        readiness.report("fetch", "timed out");
        patient.connection.set_group("g", readiness.clone());
        assert!(patient.not_ready().is_empty());
        // A member that stopped consuming says why at once.
        readiness.set_ready(false);
        readiness.report("consumer", "client unusable: fenced");
        let reasons = patient.not_ready();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("group g: not consuming: ")
                && reasons[0].contains("consumer failing for 0s: client unusable: fenced"),
            "{reasons:?}"
        );
    }
}
