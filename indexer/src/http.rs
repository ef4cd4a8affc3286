//! `/healthz` and `/metrics` over HTTP.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::{IndexerError, metrics::Metrics};

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    stall_after: Duration,
}

/// Serves `/healthz` (200 while progressing, 503 with the reason after `stall_after` without a successful step)
/// and `/metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    stall_after: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), IndexerError> {
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(|State(state): State<AppState>| async move { state.metrics.render() }))
        .with_state(AppState { metrics, stall_after });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| IndexerError::Config(format!("metrics_addr {addr}: {e}")))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| IndexerError::Config(format!("metrics server: {e}")))
}

async fn health(State(state): State<AppState>) -> (StatusCode, String) {
    match state.metrics.health(state.stall_after) {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
