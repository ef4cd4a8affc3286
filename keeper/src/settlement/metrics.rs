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

use crate::{KeeperError, metrics::Histogram};

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
    /// Chain time of the last successful step (Unix seconds; 0: none yet), for lags measured in chain time.
    pub chain_now: Arc<AtomicI64>,
    /// Durations of the steps of this process.
    pub step_seconds: Arc<Histogram>,
    /// What the token let through at the last step.
    pub token_gate: Arc<std::sync::Mutex<crate::settlement::token::TokenGate>>,
}

/// Upper bounds (seconds) of the step-duration buckets.
const STEP_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0];
/// Upper bounds (seconds) of the time from planning an action to its confirmation.
const CONFIRM_BUCKETS: [i64; 7] = [1, 5, 15, 60, 300, 900, 3600];

impl EngineMetrics {
    /// Metrics of an engine on `chain_id` whose health goes stale after `stale_after_secs` without a step.
    pub fn new(pool: PgPool, chain_id: u64, stale_after_secs: i64) -> Self {
        Self { pool, chain_id, last_step: Arc::default(), stale_after_secs, chain_now: Arc::default(), step_seconds: Arc::new(Histogram::new(STEP_BUCKETS)), token_gate: Arc::default() }
    }

    /// Records a successful step now, which took `took`, ran at chain time `chain_now` and found the token `gate`.
    pub fn stepped(&self, took: std::time::Duration, chain_now: i64, gate: crate::settlement::token::TokenGate) {
        *self.token_gate.lock().expect("token gate lock") = gate;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        self.last_step.store(now, Ordering::SeqCst);
        self.chain_now.store(chain_now, Ordering::SeqCst);
        self.step_seconds.observe(took.as_secs_f64());
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
        let gas: Vec<(String, i64)> =
            sqlx::query_as("SELECT kind, COALESCE(SUM(gas_used), 0)::BIGINT FROM keeper.outbox GROUP BY kind ORDER BY kind").fetch_all(&self.pool).await?;
        out.push_str("# HELP subsettle_keeper_gas_used_total Gas used by the keeper's mined transactions, by kind.\n# TYPE subsettle_keeper_gas_used_total counter\n");
        for (kind, gas) in gas {
            out.push_str(&format!("subsettle_keeper_gas_used_total{{kind=\"{kind}\"}} {gas}\n"));
        }
        self.render_confirm_times(&mut out).await?;
        self.render_lags(&mut out).await?;
        out.push_str("# HELP subsettle_keeper_step_seconds Duration of the engine's steps in this process.\n# TYPE subsettle_keeper_step_seconds histogram\n");
        self.step_seconds.render("subsettle_keeper_step_seconds", "", &mut out);
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
        let (awaiting, given_up): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM keeper.outbox WHERE state = 'sent' AND block_number IS NOT NULL),
                    (SELECT COUNT(*) FROM (SELECT epoch_id FROM keeper.settle_attempts GROUP BY epoch_id
                        HAVING COUNT(*) FILTER (WHERE state = 'failed') >= $1
                           AND COUNT(*) FILTER (WHERE state IN ('planned', 'sent', 'confirmed')) = 0) g)",
        )
        .bind(crate::settlement::plan::SETTLE_ATTEMPTS as i64)
        .fetch_one(&self.pool)
        .await?;
        out.push_str(&format!("# HELP subsettle_keeper_actions_awaiting_finality Actions whose transaction is mined but not final yet.\n# TYPE subsettle_keeper_actions_awaiting_finality gauge\nsubsettle_keeper_actions_awaiting_finality {awaiting}\n"));
        out.push_str(&format!("# HELP subsettle_keeper_settlements_waiting_for_operator Epochs whose settlement failed every attempt (admin retry-settlement).\n# TYPE subsettle_keeper_settlements_waiting_for_operator gauge\nsubsettle_keeper_settlements_waiting_for_operator {given_up}\n"));
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
        let gate = *self.token_gate.lock().expect("token gate lock");
        out.push_str("# HELP subsettle_keeper_token_refuses Whether the token refused our transfers at the last step (pulls or payouts held).\n# TYPE subsettle_keeper_token_refuses gauge\n");
        for (what, on) in [("paused", gate.paused), ("subscriptions_blacklisted", gate.subscriptions_blacklisted), ("escrow_blacklisted", gate.escrow_blacklisted)] {
            out.push_str(&format!("subsettle_keeper_token_refuses{{what=\"{what}\"}} {}\n", u8::from(on)));
        }
        out.push_str(&format!("# HELP subsettle_keeper_last_step_age_seconds Seconds since the last successful step (-1: none yet).\n# TYPE subsettle_keeper_last_step_age_seconds gauge\nsubsettle_keeper_last_step_age_seconds {age}\n"));
        Ok(out)
    }

    /// Time from planning an action to its confirmation, by kind, as a histogram over the outbox.
    async fn render_confirm_times(&self, out: &mut String) -> Result<(), KeeperError> {
        const CONFIRMED: &str = "SELECT kind, EXTRACT(EPOCH FROM finished_at - planned_at)::FLOAT8 AS secs FROM keeper.outbox WHERE state = 'confirmed'";
        let buckets: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH t AS ({CONFIRMED}) SELECT t.kind, b.le, COUNT(*) FILTER (WHERE t.secs <= b.le)
             FROM t CROSS JOIN UNNEST($1::BIGINT[]) AS b(le) GROUP BY t.kind, b.le ORDER BY t.kind, b.le"
        )))
        .bind(CONFIRM_BUCKETS.to_vec())
        .fetch_all(&self.pool)
        .await?;
        let totals: Vec<(String, i64, f64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("WITH t AS ({CONFIRMED}) SELECT kind, COUNT(*), COALESCE(SUM(secs), 0) FROM t GROUP BY kind ORDER BY kind")))
                .fetch_all(&self.pool)
                .await?;
        out.push_str("# HELP subsettle_keeper_action_confirm_seconds Time from planning an action to its confirmation, by kind.\n# TYPE subsettle_keeper_action_confirm_seconds histogram\n");
        for (kind, count, sum) in totals {
            for (_, bound, n) in buckets.iter().filter(|(k, _, _)| *k == kind) {
                out.push_str(&format!("subsettle_keeper_action_confirm_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}\n"));
            }
            out.push_str(&format!("subsettle_keeper_action_confirm_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {count}\n"));
            out.push_str(&format!("subsettle_keeper_action_confirm_seconds_sum{{kind=\"{kind}\"}} {sum}\n"));
            out.push_str(&format!("subsettle_keeper_action_confirm_seconds_count{{kind=\"{kind}\"}} {count}\n"));
        }
        Ok(())
    }

    /// Lags in chain time at the last step: the oldest open action, and the oldest close whose revenue is not
    /// settled on chain yet (period close to settlement).
    async fn render_lags(&self, out: &mut String) -> Result<(), KeeperError> {
        let open: Vec<(String, f64)> = sqlx::query_as(
            "SELECT kind, EXTRACT(EPOCH FROM now() - MIN(planned_at))::FLOAT8 FROM keeper.outbox
             WHERE state IN ('planned', 'sent') GROUP BY kind ORDER BY kind",
        )
        .fetch_all(&self.pool)
        .await?;
        out.push_str("# HELP subsettle_keeper_oldest_open_action_seconds Age of the oldest planned or sent action, by kind.\n# TYPE subsettle_keeper_oldest_open_action_seconds gauge\n");
        for (kind, age) in open {
            out.push_str(&format!("subsettle_keeper_oldest_open_action_seconds{{kind=\"{kind}\"}} {age:.0}\n"));
        }
        let chain_now = self.chain_now.load(Ordering::SeqCst);
        let unsettled: (Option<i64>, String) = sqlx::query_as(
            "SELECT MIN(c.closed_at), COALESCE(SUM(c.collected), 0)::TEXT FROM keeper.period_closes c
             WHERE c.chain_id = $1 AND NOT EXISTS (
                 SELECT 1 FROM keeper.epoch_closes ec JOIN chain.settlements s
                   ON s.chain_id = c.chain_id AND s.settlement_id = ec.epoch_id::NUMERIC
                 WHERE ec.close_id = c.close_id)",
        )
        .bind(self.chain_id as i64)
        .fetch_one(&self.pool)
        .await?;
        let lag = match (unsettled.0, chain_now) {
            (Some(closed), now) if now > 0 => (now - closed).max(0),
            _ => 0,
        };
        out.push_str(&format!(
            "# HELP subsettle_keeper_settlement_lag_seconds Chain time since the oldest close whose revenue is not settled on chain.\n# TYPE subsettle_keeper_settlement_lag_seconds gauge\nsubsettle_keeper_settlement_lag_seconds {lag}\n"
        ));
        out.push_str(&format!(
            "# HELP subsettle_keeper_unsettled_base_units Revenue of closed periods not settled on chain yet.\n# TYPE subsettle_keeper_unsettled_base_units gauge\nsubsettle_keeper_unsettled_base_units {}\n",
            unsettled.1
        ));
        Ok(())
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
