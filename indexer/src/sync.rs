//! The indexing loop for one deployment: backfill in ranges up to the finalized block (no reorg can touch those),
//! then follow the head block by block, checking each block's parent hash against the stored one and rolling back
//! to the fork point when they differ.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{StreamExt, stream};
use subsettle_abi::Deployment;
use tracing::{info, warn};

use crate::{
    IndexerError,
    backoff::Backoff,
    logs::{batch, to_i64},
    metrics::Metrics,
    source::{ChainSource, Header},
    store::{Batch, BlockRef, Cursor, CursorTurn, Store},
};

/// Range commits open at once during backfill (fewer if the pool is smaller): the next range's rows are written
/// while the previous range commits. Two keep both sides busy (more would only queue at the cursor lock, each
/// holding a connection).
const COMMITS_IN_FLIGHT: usize = 2;

/// Backfill ranges per step, at most (see [`Indexer::backfill`]).
const RANGES_PER_STEP: usize = 256;

/// After this long without a new head block, the loop warns (again every this many seconds).
const STALLED_HEAD_SECS: u64 = 60;

/// Knobs of the loop.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Pause between polls when caught up.
    pub poll_interval: Duration,
    /// Blocks below the head treated as final when the node has no `finalized` tag.
    pub confirmations: u64,
    /// Ranges fetched at once during backfill.
    pub concurrency: usize,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The last indexed block after the step.
    pub indexed: Option<u64>,
    /// Events committed by the step.
    pub events: u64,
    /// Blocks rolled back by a reorg in the step.
    pub rolled_back: u64,
    /// Whether the indexer had nothing to do (caught up with its target).
    pub idle: bool,
}

/// Indexes one deployment.
#[derive(Debug)]
pub struct Indexer {
    deployment: Deployment,
    source: Arc<ChainSource>,
    store: Store,
    options: SyncOptions,
    metrics: Metrics,
}

impl Indexer {
    /// An indexer of `deployment` reading `source` and writing `store`.
    pub fn new(deployment: Deployment, source: ChainSource, store: Store, options: SyncOptions, metrics: Metrics) -> Self {
        Self { deployment, source: Arc::new(source), store, options, metrics }
    }

    /// Checks that the node serves the deployment's chain and registers the deployment.
    pub async fn prepare(&self) -> Result<Option<Cursor>, IndexerError> {
        let chain_id = self.source.chain_id().await?;
        self.register(chain_id).await
    }

    /// Registers the deployment once the node said it serves `chain_id`, which must be the deployment's.
    async fn register(&self, chain_id: u64) -> Result<Option<Cursor>, IndexerError> {
        if chain_id != self.deployment.chain_id {
            return Err(IndexerError::Config(format!(
                "the RPC serves chain {chain_id}, but the deployment is on chain {}",
                self.deployment.chain_id
            )));
        }
        let cursor = self.store.register(&self.deployment).await?;
        if let Some(cursor) = &cursor {
            // A restarted indexer reports where it resumes, not block 0, until its first commit.
            self.metrics.committed(to_u64(cursor.number), 0);
        }
        Ok(cursor)
    }

    /// Indexes until `shutdown` resolves, polling when caught up.
    ///
    /// Nothing a retry can fix stops the loop: until the node answers (and serves the deployment's chain) and
    /// the deployment is registered, and whenever a step fails later (the node or Postgres gone, a failed
    /// call), the attempt is logged in one line and retried after a [`Backoff`] (0.5 s doubling to 30 s) for
    /// as long as it takes. The loop ends with an error only for [`IndexerError::is_permanent`] errors: the node
    /// serves another chain, or a reorg went below the finalized block.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), IndexerError> {
        tokio::pin!(shutdown);
        let chain_id = self.deployment.chain_id;
        let mut backoff = Backoff::default();
        // Start. One eth_chainId per attempt (the backoff spaces them, not the source's quick retries); a shutdown
        // cancels an attempt in flight, which at most registered the deployment (idempotent).
        let cursor = loop {
            let attempt = async {
                let served = self.source.chain_id_once().await?;
                self.register(served).await
            };
            let result = tokio::select! {
                () = &mut shutdown => {
                    info!("shutting down");
                    return Ok(());
                }
                result = attempt => result,
            };
            match result {
                Ok(cursor) => break cursor,
                Err(err) if err.is_permanent() => return Err(err),
                Err(err) => {
                    let wait = backoff.failed();
                    self.metrics.failed(&err);
                    warn!(
                        chain_id,
                        attempt = backoff.failures(),
                        retry_in = %Seconds(wait),
                        error = %OneLine(&err),
                        "cannot start: the node or Postgres does not answer; retrying"
                    );
                    if wait_or_stop(&mut shutdown, wait).await {
                        return Ok(());
                    }
                }
            }
        };
        let failed = backoff.succeeded();
        info!(
            chain_id,
            from_block = cursor.map_or(self.deployment.start_block, |c| to_u64(c.number) + 1),
            failed_attempts = failed,
            "the node answers; indexing"
        );
        loop {
            let started = tokio::time::Instant::now();
            let pause = match self.step(None).await {
                Ok(progress) => {
                    let failed = backoff.succeeded();
                    if failed > 0 {
                        info!(chain_id, failed_attempts = failed, "indexing again");
                    }
                    self.metrics.alive();
                    // Polls start every `poll_interval` (the step's own time is not added to the wait), so a
                    // block waits at most one interval plus one step.
                    if progress.idle { self.options.poll_interval.saturating_sub(started.elapsed()) } else { Duration::ZERO }
                }
                Err(err) if err.is_permanent() => return Err(err),
                Err(err) => {
                    let wait = backoff.failed();
                    self.metrics.failed(&err);
                    warn!(
                        chain_id,
                        attempt = backoff.failures(),
                        retry_in = %Seconds(wait),
                        error = %OneLine(&err),
                        "indexing step failed; retrying"
                    );
                    wait
                }
            };
            if wait_or_stop(&mut shutdown, pause).await {
                return Ok(());
            }
        }
    }

    /// Indexes up to block `to` (or the head) and returns when done.
    pub async fn backfill_to(&self, to: Option<u64>) -> Result<Progress, IndexerError> {
        self.prepare().await?;
        let mut total = Progress::default();
        loop {
            let progress = self.step(to).await?;
            total.events += progress.events;
            total.rolled_back += progress.rolled_back;
            total.indexed = progress.indexed;
            if progress.idle {
                total.idle = true;
                return Ok(total);
            }
        }
    }

    /// One step: a batch of backfill ranges below the finalized block, or the next block above it. Call
    /// [`Indexer::prepare`] once before the first step (`run` and `backfill_to` do).
    pub async fn step(&self, target: Option<u64>) -> Result<Progress, IndexerError> {
        let cursor = self.store.cursor(&self.deployment).await?;
        let head = self.source.head().await?;
        self.metrics.head(head);
        let unchanged = self.metrics.head_unchanged_secs();
        if unchanged >= STALLED_HEAD_SECS && unchanged % STALLED_HEAD_SECS < self.options.poll_interval.as_secs().max(1) {
            warn!(head, seconds = unchanged, "the node's head has not moved; is the RPC stalled?");
        }
        let finalized = match self.source.finalized().await? {
            Some(finalized) => finalized,
            None => head.saturating_sub(self.options.confirmations),
        };
        let end = target.map_or(head, |t| t.min(head));
        let next = cursor.as_ref().map_or(self.deployment.start_block, |c| to_u64(c.number) + 1);
        if next > end {
            // No new block to read, but the chain may have changed without growing: a reorg to the same height,
            // or to a shorter chain (the head is then below the cursor). The cursor block must still be the
            // node's; its hash covers every block below it, so one header answers for the whole unfinalized
            // window. (When there are new blocks, `follow` and `backfill` check the cursor themselves.)
            if let Some(cursor) = &cursor {
                let canonical = self.source.block_header(to_u64(cursor.number)).await?;
                if canonical.is_none_or(|header| header.hash.as_slice() != cursor.hash.as_slice()) {
                    return self.roll_back(cursor).await;
                }
            }
            return Ok(Progress { indexed: cursor.map(|c| to_u64(c.number)), idle: true, ..Progress::default() });
        }
        if next <= finalized.min(end) {
            self.backfill(cursor, next, finalized.min(end)).await
        } else {
            let progress = self.follow(cursor, next).await?;
            self.store.prune_blocks(self.deployment.chain_id, to_i64(finalized)).await?;
            Ok(progress)
        }
    }

    /// Commits final blocks `[from, to]` in ranges, fetching up to `concurrency` ranges at once and committing
    /// them in order, two at a time.
    async fn backfill(&self, mut cursor: Option<Cursor>, from: u64, to: u64) -> Result<Progress, IndexerError> {
        // The cursor block is final by now: if the node has another block at its height, the chain reorganised
        // below finality while this indexer was behind, and nothing after it can be trusted.
        if let Some(cursor) = &cursor {
            let canonical = self.source.header(to_u64(cursor.number)).await?;
            if canonical.hash.as_slice() != cursor.hash.as_slice() {
                return Err(IndexerError::DeepReorg { chain_id: self.deployment.chain_id, below: to_u64(cursor.number) });
            }
        }
        let concurrency = self.options.concurrency.max(1);
        // Ranges are cut as the fetches start, each at the size the provider accepts by then, up to `to` or
        // RANGES_PER_STEP ranges: one step keeps the fetch and commit pipeline full from its first range to its
        // last (a step drains it: it ends with commits only and the next begins with fetches only), and still
        // ends often enough to refresh the head and the finalized block on a long backfill.
        let (mut next, mut cut) = (Some(from), 0);
        let ranges = std::iter::from_fn(move || {
            let start = next.filter(|start| *start <= to && cut < RANGES_PER_STEP)?;
            let end = start.saturating_add(self.source.range().max(1) - 1).min(to);
            (next, cut) = (end.checked_add(1), cut + 1);
            Some((start, end))
        });
        // Each range is fetched and turned into rows while earlier ranges commit, up to `concurrency` ranges in
        // flight whatever the database is doing. Fetches and commits run as tasks of their own, so the JSON parse,
        // the row building and the COPY encoding of different ranges use every worker thread, not only this one.
        let mut fetched = stream::iter(ranges)
            .map(|(start, end)| {
                let (source, deployment) = (Arc::clone(&self.source), self.deployment.clone());
                Task::spawn(async move {
                    let logs = source.logs(start, end).await?;
                    let header = source.header(end).await?;
                    let mut batch = batch(&source, &deployment, &logs, None).await?;
                    batch.blocks.push(block_ref(&header));
                    Ok::<_, IndexerError>((batch, header))
                })
            })
            .buffered(concurrency);
        // Fetching goes on while up to COMMITS_IN_FLIGHT range commits overlap (`Store::commit` makes
        // them visible in order); fetched ranges wait in `ready`, at most `concurrency` of them.
        let in_flight = self.store.overlapping_commits(COMMITS_IN_FLIGHT);
        let mut ready: std::collections::VecDeque<(Batch, Header)> = std::collections::VecDeque::new();
        let mut commits = stream::FuturesOrdered::new();
        let mut wait = None;
        let mut fetching = true;
        let mut progress = Progress::default();
        loop {
            while commits.len() < in_flight
                && let Some((batch, header)) = ready.pop_front()
            {
                let next_cursor = Cursor { number: to_i64(header.number), hash: header.hash.to_vec() };
                let expected = cursor.replace(next_cursor.clone());
                let (done, next_wait) = tokio::sync::oneshot::channel();
                let turn = CursorTurn { wait: wait.replace(next_wait), done: Some(done) };
                let (store, deployment) = (self.store.clone(), self.deployment.clone());
                let committed = (header.number, batch.raw.len() as u64);
                commits.push_back(Task::spawn(async move {
                    store.commit(&deployment, expected.as_ref(), &batch, &next_cursor, turn).await?;
                    Ok::<_, IndexerError>(committed)
                }));
            }
            tokio::select! {
                fetched = fetched.next(), if fetching && ready.len() < concurrency => match fetched {
                    Some(result) => ready.push_back(result?),
                    None => fetching = false,
                },
                Some(committed) = commits.next(), if !commits.is_empty() => {
                    let (number, events) = committed?;
                    self.metrics.committed(number, events);
                    progress.events += events;
                    progress.indexed = Some(number);
                }
                else => return Ok(progress),
            }
        }
    }

    /// Indexes block `number` above the finalized block, or rolls back a reorg found there.
    async fn follow(&self, cursor: Option<Cursor>, number: u64) -> Result<Progress, IndexerError> {
        let header = self.source.header(number).await?;
        if let Some(cursor) = &cursor
            && header.parent_hash.as_slice() != cursor.hash.as_slice()
        {
            return self.roll_back(cursor).await;
        }
        let logs = self.source.logs_at(header.hash).await?;
        let mut batch = batch(&self.source, &self.deployment, &logs, Some(&header)).await?;
        batch.blocks.push(block_ref(&header));
        let events = batch.raw.len() as u64;
        let next_cursor = Cursor { number: to_i64(number), hash: header.hash.to_vec() };
        self.store.commit(&self.deployment, cursor.as_ref(), &batch, &next_cursor, CursorTurn::default()).await?;
        self.metrics.committed(number, events);
        Ok(Progress { indexed: Some(number), events, ..Progress::default() })
    }

    /// Finds the newest indexed block still on the canonical chain and deletes everything after it.
    async fn roll_back(&self, cursor: &Cursor) -> Result<Progress, IndexerError> {
        let mut number = cursor.number;
        let fork = loop {
            let stored = self.store.block_hash(self.deployment.chain_id, number).await?;
            let Some(stored) = stored else {
                return Err(IndexerError::DeepReorg { chain_id: self.deployment.chain_id, below: to_u64(number) });
            };
            // A block the node does not have (above a shorter chain's head) is not canonical either.
            let canonical = self.source.block_header(to_u64(number)).await?;
            if canonical.is_some_and(|header| header.hash.as_slice() == stored.as_slice()) {
                break Cursor { number, hash: stored };
            }
            if number == 0 {
                return Err(IndexerError::DeepReorg { chain_id: self.deployment.chain_id, below: 0 });
            }
            number -= 1;
        };
        let depth = to_u64(cursor.number - fork.number);
        let removed = self.store.roll_back(&self.deployment, &fork).await?;
        self.metrics.reorg(depth);
        warn!(fork = fork.number, depth, removed_logs = removed, "reorg: rolled back to the fork point");
        Ok(Progress { indexed: Some(to_u64(fork.number)), rolled_back: depth, ..Progress::default() })
    }
}

/// Sleeps for `pause` unless `shutdown` resolves first; returns whether it did (and says so in the log).
async fn wait_or_stop(shutdown: &mut Pin<&mut impl Future<Output = ()>>, pause: Duration) -> bool {
    tokio::select! {
        () = shutdown.as_mut() => {
            info!("shutting down");
            true
        }
        () = tokio::time::sleep(pause) => false,
    }
}

/// A duration in seconds with one decimal, for log lines ("2.4s").
struct Seconds(Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1}s", self.0.as_secs_f64())
    }
}

/// An error on one line: a node's or proxy's answer quoted in an error may carry line breaks, and every failed
/// attempt is one log line.
struct OneLine<'a>(&'a IndexerError);

impl std::fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.to_string();
        let mut words = text.split_whitespace();
        if let Some(first) = words.next() {
            f.write_str(first)?;
            for word in words {
                write!(f, " {word}")?;
            }
        }
        Ok(())
    }
}

/// A spawned task, aborted when dropped: a backfill that stops at an error leaves no fetch or commit running.
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    fn spawn(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // A task is only cancelled by our own `Drop`, after which it is never polled, so an error here is a panic
        // of the task, passed on as the panic it was.
        Pin::new(&mut self.0).poll(cx).map(|joined| joined.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic())))
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn block_ref(header: &Header) -> BlockRef {
    BlockRef { number: to_i64(header.number), hash: header.hash.to_vec(), parent_hash: header.parent_hash.to_vec() }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_task_stops_running() {
        let (keep_alive, closed) = tokio::sync::oneshot::channel::<()>();
        let task = Task::spawn(async move {
            let _held = keep_alive;
            std::future::pending::<()>().await;
        });
        drop(task);
        // The sender is dropped only if the task was aborted; a detached task would hold it forever.
        tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the task kept running").unwrap_err();
    }

    #[tokio::test]
    async fn a_task_returns_its_output_and_passes_its_panic_on() {
        assert_eq!(Task::spawn(async { 7 }).await, 7);
        let panicked = tokio::spawn(Task::spawn(async { panic!("range task failed") })).await.unwrap_err();
        assert!(panicked.is_panic());
    }
}
