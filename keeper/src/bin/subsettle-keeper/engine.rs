//! `run`: the settlement engine as a daemon under the sender lease, and `status`.

use super::*;
use super::chain::connect_sender;

pub(crate) async fn run_engine(args: RunArgs) -> anyhow::Result<()> {
    use subsettle_keeper::{
        settlement::engine::{Engine, Lease},
        settlement::outbox::FeePolicy,
        settlement::renewals::RenewalPolicy,
        settlement::plan::SettlementPolicy,
    };
    let (settings, pool) = open(&args.chain.settings).await?;
    require_default_split(&settings)?;
    let run = settings.run.clone().context("run settings")?;
    let gwei = 1_000_000_000u128;
    let fees = FeePolicy {
        max_fee_cap: u128::from(run.max_fee_gwei) * gwei,
        priority_fee: u128::from(run.priority_fee_gwei) * gwei,
        bump_after: Duration::from_secs(run.bump_after),
        bump_percent: 20,
    };
    let sender = connect_sender(&settings, &args.chain, fees).await?;
    let chain_id = sender.chain_id;
    let charge_window = subsettle_abi::Subscriptions::new(settings.deployment.subscriptions, &sender.provider)
        .chargeWindow()
        .call()
        .await
        .context("reading chargeWindow()")?;
    let retry = i64::try_from(run.retry_interval).unwrap_or(i64::MAX);
    let engine = Engine {
        pool: pool.clone(),
        sender,
        deployment: settings.deployment.clone(),
        close: close_options(&settings),
        renewals: RenewalPolicy { batch: run.batch, retry_interval: retry },
        settlement: SettlementPolicy {
            batch: run.batch,
            retry_interval: retry,
            charge_window: i64::try_from(charge_window.to::<u64>()).unwrap_or(i64::MAX),
            payout_threshold: run.payout_threshold,
            charge_threshold: run.charge_threshold,
        },
        epoch_interval: i64::try_from(run.epoch_interval).unwrap_or(i64::MAX),
    };
    if args.dry_run {
        let report = engine.step(true).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // One sender at a time: wait for the lease, then keep it for the life of the process.
    let _lease = loop {
        if let Some(lease) = Lease::try_acquire(&pool).await? {
            break lease;
        }
        tracing::info!(holder = ?Lease::holder(&pool).await?, "another keeper holds the sender lease; waiting");
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    };
    tracing::info!("holding the sender lease");
    let stale_after = i64::try_from(run.interval.saturating_mul(3).max(60)).unwrap_or(i64::MAX);
    let metrics = Arc::new(subsettle_keeper::settlement::metrics::EngineMetrics::new(pool.clone(), chain_id, stale_after));
    let server = (!args.once).then(|| tokio::spawn(subsettle_keeper::settlement::metrics::serve(metrics.clone(), run.metrics_addr)));
    loop {
        // A step runs to its end before a shutdown is honoured: whatever it signed is persisted first.
        let mut pause = run.interval;
        let started = std::time::Instant::now();
        match engine.step(false).await {
            Ok(report) => {
                metrics.stepped(started.elapsed(), report.now, report.token);
                tracing::info!(?report, "step");
                // Wake early when a renewal or a period close falls due before the next interval.
                match engine.next_due().await {
                    Ok(next) => pause = subsettle_keeper::settlement::engine::pause_until(report.now, next, run.interval),
                    Err(error) => tracing::warn!(%error, "could not read when work falls due; waiting the full interval"),
                }
            }
            Err(error) => tracing::error!(%error, "step failed; retrying next interval"),
        }
        if args.once {
            return Ok(());
        }
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("shutting down");
                if let Some(server) = server {
                    server.abort();
                }
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_secs(pause)) => {}
        }
    }
}

pub(crate) async fn run_status(overrides: Overrides) -> anyhow::Result<()> {
    let (settings, pool) = open(&overrides).await?;
    let outbox: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, state, COUNT(*) FROM keeper.outbox GROUP BY kind, state ORDER BY kind, state").fetch_all(&pool).await?;
    let open_rows: Vec<(String, String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT action_key, state, nonce, failure FROM keeper.outbox
         WHERE state IN ('planned', 'sent') OR (state = 'failed' AND finished_at > now() - INTERVAL '1 day')
         ORDER BY planned_at DESC LIMIT 20",
    )
    .fetch_all(&pool)
    .await?;
    let epochs: Vec<(i64, i64, String, bool)> = sqlx::query_as(
        "SELECT e.epoch_id, e.closed_at, e.total::TEXT,
                EXISTS (SELECT 1 FROM chain.settlements s WHERE s.chain_id = e.chain_id AND s.settlement_id = e.epoch_id::NUMERIC)
         FROM keeper.epochs e WHERE e.chain_id = $1 ORDER BY e.epoch_id DESC LIMIT 5",
    )
    .bind(settings.deployment.chain_id as i64)
    .fetch_all(&pool)
    .await?;
    let unclosed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keeper.usage_events WHERE close_id IS NULL").fetch_one(&pool).await?;
    let awaiting_finality: Vec<(String, i64)> = sqlx::query_as(
        "SELECT action_key, block_number FROM keeper.outbox WHERE state = 'sent' AND block_number IS NOT NULL ORDER BY block_number LIMIT 20",
    )
    .fetch_all(&pool)
    .await?;
    let waiting_for_operator: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT epoch_id, (ARRAY_AGG(failure ORDER BY planned_at DESC))[1] FROM keeper.settle_attempts GROUP BY epoch_id
         HAVING COUNT(*) FILTER (WHERE state = 'failed') >= $1 AND COUNT(*) FILTER (WHERE state IN ('planned', 'sent', 'confirmed')) = 0
         ORDER BY epoch_id",
    )
    .bind(subsettle_keeper::settlement::plan::SETTLE_ATTEMPTS as i64)
    .fetch_all(&pool)
    .await?;
    let status = serde_json::json!({
        "lease_holder": subsettle_keeper::settlement::engine::Lease::holder(&pool).await?,
        "outbox": outbox.iter().map(|(k, s, n)| serde_json::json!({"kind": k, "state": s, "count": n})).collect::<Vec<_>>(),
        "open_or_recently_failed": open_rows.iter().map(|(k, s, n, f)| serde_json::json!({"action": k, "state": s, "nonce": n, "failure": f})).collect::<Vec<_>>(),
        "last_epochs": epochs.iter().map(|(id, at, total, settled)| serde_json::json!({"epoch": id, "closed_at": at, "total": total, "settled_on_chain": settled})).collect::<Vec<_>>(),
        "usage_events_not_yet_closed": unclosed,
        "mined_not_final": awaiting_finality.iter().map(|(k, b)| serde_json::json!({"action": k, "block": b})).collect::<Vec<_>>(),
        "settlements_waiting_for_operator": waiting_for_operator.iter()
            .map(|(e, f)| serde_json::json!({"epoch": e, "last_failure": f, "retry": format!("subsettle-keeper admin retry-settlement --epoch {e}")}))
            .collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}
