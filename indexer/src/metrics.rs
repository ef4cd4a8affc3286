//! Counters the indexer exposes in the Prometheus text format on `/metrics`, and the `/healthz` verdict.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Shared, cheap-to-clone counters.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    head: AtomicU64,
    indexed: AtomicU64,
    events: AtomicU64,
    rpc_errors: AtomicU64,
    reorgs: AtomicU64,
    last_rollback_depth: AtomicU64,
    last_progress_unix: AtomicU64,
    head_changed_unix: AtomicU64,
    /// Why the last failed attempt failed, for `/healthz` (cleared by a successful step).
    last_error: Mutex<Option<String>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Metrics {
    /// Records the chain head seen.
    pub fn head(&self, head: u64) {
        if self.0.head.swap(head, Ordering::Relaxed) != head {
            self.0.head_changed_unix.store(now(), Ordering::Relaxed);
        }
    }

    /// Records a commit up to `block` with `events` new events.
    pub fn committed(&self, block: u64, events: u64) {
        self.0.indexed.store(block, Ordering::Relaxed);
        self.0.events.fetch_add(events, Ordering::Relaxed);
        self.0.last_progress_unix.store(now(), Ordering::Relaxed);
    }

    /// Records that a step finished without error (even with nothing new).
    pub fn alive(&self) {
        self.0.last_progress_unix.store(now(), Ordering::Relaxed);
        *self.0.last_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Records why an attempt failed (shown by `/healthz` until a step succeeds).
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        *self.0.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }

    /// Counts a failed RPC call.
    pub fn rpc_error(&self) {
        self.0.rpc_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a reorg rolled back `depth` blocks.
    pub fn reorg(&self, depth: u64) {
        self.0.reorgs.fetch_add(1, Ordering::Relaxed);
        self.0.last_rollback_depth.store(depth, Ordering::Relaxed);
    }

    /// Seconds since the node's head last moved.
    pub fn head_unchanged_secs(&self) -> u64 {
        let changed = self.0.head_changed_unix.load(Ordering::Relaxed);
        if changed == 0 { 0 } else { now().saturating_sub(changed) }
    }

    /// The last committed block and the head, for progress lines.
    pub fn position(&self) -> (u64, u64) {
        (self.0.indexed.load(Ordering::Relaxed), self.0.head.load(Ordering::Relaxed))
    }

    /// Total events committed since start.
    pub fn events(&self) -> u64 {
        self.0.events.load(Ordering::Relaxed)
    }

    /// Blocks between the chain head and the indexed block.
    pub fn blocks_behind(&self) -> u64 {
        self.0.head.load(Ordering::Relaxed).saturating_sub(self.0.indexed.load(Ordering::Relaxed))
    }

    /// `Ok` while the indexer made progress within `stall_after`, else why not.
    pub fn health(&self, stall_after: Duration) -> Result<(), String> {
        let last = self.0.last_progress_unix.load(Ordering::Relaxed);
        let idle = now().saturating_sub(last);
        let cause = || {
            let error = self.0.last_error.lock().unwrap_or_else(PoisonError::into_inner);
            error.as_ref().map_or(String::new(), |error| format!("; last error: {error}"))
        };
        if last == 0 {
            return Err(format!("no step has completed yet{}", cause()));
        }
        if idle > stall_after.as_secs() {
            return Err(format!("no successful step for {idle} s{}", cause()));
        }
        Ok(())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let i = &self.0;
        let head_stalled = now().saturating_sub(i.head_changed_unix.load(Ordering::Relaxed));
        format!(
            "# HELP subsettle_indexer_head_block Latest block number the node reported.\n\
             # TYPE subsettle_indexer_head_block gauge\nsubsettle_indexer_head_block {}\n\
             # HELP subsettle_indexer_indexed_block Last block committed to Postgres.\n\
             # TYPE subsettle_indexer_indexed_block gauge\nsubsettle_indexer_indexed_block {}\n\
             # HELP subsettle_indexer_blocks_behind Blocks between head and the indexed block.\n\
             # TYPE subsettle_indexer_blocks_behind gauge\nsubsettle_indexer_blocks_behind {}\n\
             # HELP subsettle_indexer_events_total Events committed since start.\n\
             # TYPE subsettle_indexer_events_total counter\nsubsettle_indexer_events_total {}\n\
             # HELP subsettle_indexer_rpc_errors_total Failed RPC calls (retried or split).\n\
             # TYPE subsettle_indexer_rpc_errors_total counter\nsubsettle_indexer_rpc_errors_total {}\n\
             # HELP subsettle_indexer_reorgs_total Reorgs rolled back.\n\
             # TYPE subsettle_indexer_reorgs_total counter\nsubsettle_indexer_reorgs_total {}\n\
             # HELP subsettle_indexer_last_rollback_depth Blocks removed by the last reorg.\n\
             # TYPE subsettle_indexer_last_rollback_depth gauge\nsubsettle_indexer_last_rollback_depth {}\n\
             # HELP subsettle_indexer_head_unchanged_seconds Seconds since the node's head last moved.\n\
             # TYPE subsettle_indexer_head_unchanged_seconds gauge\nsubsettle_indexer_head_unchanged_seconds {}\n",
            i.head.load(Ordering::Relaxed),
            i.indexed.load(Ordering::Relaxed),
            self.blocks_behind(),
            i.events.load(Ordering::Relaxed),
            i.rpc_errors.load(Ordering::Relaxed),
            i.reorgs.load(Ordering::Relaxed),
            i.last_rollback_depth.load(Ordering::Relaxed),
            head_stalled,
        )
    }
}
