//! Prometheus metrics and `/healthz` of `subsettle-keeper run`, read from Postgres at scrape time (the outbox and
//! the indexed chain are the truth; nothing is counted twice across restarts).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use sqlx::PgPool;

use crate::KeeperError;

/// What the scrape needs.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Postgres.
    pub pool: PgPool,
    /// Chain id of the deployment.
    pub chain_id: u64,
    /// Unix seconds of the last successful step (0: none yet).
    pub last_step: Arc<AtomicI64>,
    /// Steps longer ago than this make `/healthz` answer 503.
    pub stale_after_secs: i64,
}

impl EngineMetrics {
    /// Records a successful step now.
    pub fn stepped(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        self.last_step.store(now, Ordering::SeqCst);
    }

    fn step_age(&self) -> i64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        match self.last_step.load(Ordering::SeqCst) {
            0 => i64::MAX,
            last => now - last,
        }
    }

    /// The text exposition.
    pub async fn render(&self) -> Result<String, KeeperError> {
        let mut out = String::new();
        out.push_str("# HELP subsettle_keeper_actions Outbox actions by kind and state.\n# TYPE subsettle_keeper_actions gauge\n");
        let actions: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT kind, state, COUNT(*) FROM keeper.outbox GROUP BY kind, state ORDER BY kind, state").fetch_all(&self.pool).await?;
        for (kind, state, count) in actions {
            out.push_str(&format!("subsettle_keeper_actions{{kind=\"{kind}\",state=\"{state}\"}} {count}\n"));
        }
        let gas: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(gas_used), 0)::BIGINT FROM keeper.outbox").fetch_one(&self.pool).await?;
        out.push_str(&format!("# HELP subsettle_keeper_gas_used_total Gas used by the keeper's mined transactions.\n# TYPE subsettle_keeper_gas_used_total counter\nsubsettle_keeper_gas_used_total {gas}\n"));
        let moved: Vec<(String, String)> = sqlx::query_as(
            "SELECT 'renewals', COALESCE(SUM(amount), 0)::TEXT FROM chain.renewals WHERE chain_id = $1
             UNION ALL SELECT 'usage_charges', COALESCE(SUM(amount), 0)::TEXT FROM chain.usage_charges WHERE chain_id = $1
             UNION ALL SELECT 'settled', COALESCE(SUM(total), 0)::TEXT FROM chain.settlements WHERE chain_id = $1
             UNION ALL SELECT 'claimed', COALESCE(SUM(amount), 0)::TEXT FROM chain.claims WHERE chain_id = $1 AND succeeded",
        )
        .bind(self.chain_id as i64)
        .fetch_all(&self.pool)
        .await?;
        out.push_str("# HELP subsettle_usdc_moved_base_units Token base units moved on chain, as indexed.\n# TYPE subsettle_usdc_moved_base_units counter\n");
        for (flow, amount) in moved {
            out.push_str(&format!("subsettle_usdc_moved_base_units{{flow=\"{flow}\"}} {amount}\n"));
        }
        let failures: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.outbox WHERE state = 'failed'").fetch_one(&self.pool).await?;
        out.push_str(&format!("# HELP subsettle_keeper_failures_total Actions that failed (pre-check or revert).\n# TYPE subsettle_keeper_failures_total counter\nsubsettle_keeper_failures_total {failures}\n"));
        let unclosed: i64 = sqlx::query_scalar(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - MIN(received_at)), 0)::BIGINT FROM keeper.usage_events WHERE close_id IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        out.push_str(&format!("# HELP subsettle_keeper_oldest_unclosed_usage_seconds Age of the oldest usage event not yet closed.\n# TYPE subsettle_keeper_oldest_unclosed_usage_seconds gauge\nsubsettle_keeper_oldest_unclosed_usage_seconds {unclosed}\n"));
        let age = self.step_age();
        let age = if age == i64::MAX { -1 } else { age };
        out.push_str(&format!("# HELP subsettle_keeper_last_step_age_seconds Seconds since the last successful step (-1: none yet).\n# TYPE subsettle_keeper_last_step_age_seconds gauge\nsubsettle_keeper_last_step_age_seconds {age}\n"));
        Ok(out)
    }
}

async fn metrics(State(m): State<Arc<EngineMetrics>>) -> impl IntoResponse {
    match m.render().await {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("metrics unavailable: {e}\n")),
    }
}

async fn healthz(State(m): State<Arc<EngineMetrics>>) -> impl IntoResponse {
    let age = m.step_age();
    if age <= m.stale_after_secs {
        (StatusCode::OK, format!("ok: last step {age} s ago\n"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no successful step recently\n".to_owned())
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped.
pub async fn serve(metrics_state: Arc<EngineMetrics>, addr: SocketAddr) -> Result<(), KeeperError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| KeeperError::Invalid { field: "metrics_addr".into(), reason: format!("{addr}: {e}") })?;
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(metrics_state);
    axum::serve(listener, app).await.map_err(|e| KeeperError::Invalid { field: "metrics".into(), reason: e.to_string() })
}
