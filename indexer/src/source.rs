//! Reading the chain: heads (latest and finalized), block headers and logs, with retries on transient errors and
//! block ranges that shrink when the provider refuses a range as too large and grow again on success.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::{Address, B256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{Filter, Log},
    transports::{RpcError, TransportErrorKind, http::reqwest},
};
use tracing::debug;

use crate::{IndexerError, metrics::Metrics};

/// Longest wait for a TCP (and TLS) connection to the node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one RPC answer (a wide eth_getLogs from a remote provider included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// JSON-RPC "internal error": a server-side failure, not an answer about the request.
const INTERNAL_ERROR: i64 = -32603;

/// A block header's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Number.
    pub number: u64,
    /// Hash.
    pub hash: B256,
    /// Parent hash.
    pub parent_hash: B256,
    /// Timestamp (Unix seconds).
    pub timestamp: u64,
}

/// Retry policy for transient RPC failures.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts before giving up (the run loop then backs off and tries again later).
    pub attempts: u32,
    /// First backoff; doubles each attempt.
    pub initial: Duration,
    /// Longest backoff.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 6, initial: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

/// The logs one eth_getLogs answer is sized for. Dense stretches get shorter ranges, so a backfill's first
/// commit starts while later ranges are still being fetched (on the bench's chain of 12 logs a block, 1000-block
/// ranges backfilled 33 % faster than 5000-block ones); sparse stretches grow to `max_range`.
const TARGET_LOGS_PER_RANGE: u64 = 10_000;
/// The range of the first request, when `max_range` is larger; it doubles after every answer with few logs.
const FIRST_RANGE: u64 = 1_000;

/// The range to ask for after `blocks` blocks (at a current range of `current`) answered with `logs` logs.
fn next_range(current: u64, blocks: u64, logs: u64, max_range: u64) -> u64 {
    let next = if logs > TARGET_LOGS_PER_RANGE {
        // At most `blocks`, since logs > target; `blocks` is a range size, far below overflow.
        blocks.saturating_mul(TARGET_LOGS_PER_RANGE) / logs
    } else {
        current.saturating_mul(2)
    };
    next.clamp(1, max_range.max(1))
}

/// The chain as the indexer reads it.
#[derive(Debug)]
pub struct ChainSource {
    provider: DynProvider,
    addresses: Vec<Address>,
    range: AtomicU64,
    max_range: u64,
    retry: Retry,
    metrics: Metrics,
}

/// Whether an RPC error says the request was too large (too many logs, range too wide, response too big).
fn is_too_large(err: &RpcError<TransportErrorKind>) -> bool {
    let text = err.to_string().to_lowercase();
    ["too many", "exceed", "limit", "range", "more than", "too large", "response size", "-32005"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// A smaller range the provider suggests in its error text (e.g. "try with this block range [0x10, 0x2f]"),
/// accepted only if it starts at `from` and ends before `to`.
fn suggested_end(err: &RpcError<TransportErrorKind>, from: u64, to: u64) -> Option<u64> {
    let text = err.to_string();
    let numbers: Vec<u64> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|word| word.strip_prefix("0x").and_then(|hex| u64::from_str_radix(hex, 16).ok()))
        .collect();
    match numbers.as_slice() {
        [start, end, ..] if *start == from && *end >= from && *end < to => Some(*end),
        _ => None,
    }
}

/// An RPC error with its causes, e.g. "error sending request for url (...): client error (Connect): tcp connect
/// error: Connection refused (os error 111)": the transport's own text leaves out why the request failed.
fn describe(err: &RpcError<TransportErrorKind>) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl ChainSource {
    /// Connects to `rpc_url` to read the logs of `addresses`.
    pub fn connect(rpc_url: &str, addresses: Vec<Address>, max_range: u64, retry: Retry, metrics: Metrics) -> Result<Self, IndexerError> {
        let url = rpc_url
            .parse()
            .map_err(|_| IndexerError::Config(format!("rpc_url `{rpc_url}` is not a URL")))?;
        // A node that stops answering without closing the connection (a dropped network path) must fail the
        // call rather than hang the loop: the retries and the run loop's backoff take it from there.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| IndexerError::Config(format!("rpc_url `{rpc_url}`: cannot build an HTTP client: {e}")))?;
        let provider = ProviderBuilder::new().connect_reqwest(client, url).erased();
        let max_range = max_range.max(1);
        let first = max_range.min(FIRST_RANGE);
        Ok(Self { provider, addresses, range: AtomicU64::new(first), max_range, retry, metrics })
    }

    async fn retrying<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, IndexerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError<TransportErrorKind>>>,
    {
        let mut delay = self.retry.initial;
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) if attempt >= self.retry.attempts => {
                    self.metrics.rpc_error();
                    return Err(IndexerError::Rpc(format!("{what}: {}", describe(&err))));
                }
                Err(err) => {
                    self.metrics.rpc_error();
                    debug!(err = describe(&err), attempt, what, "RPC call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max);
                    attempt += 1;
                }
            }
        }
    }

    /// The chain id the node reports.
    pub async fn chain_id(&self) -> Result<u64, IndexerError> {
        self.retrying("eth_chainId", || self.provider.get_chain_id()).await
    }

    /// The chain id the node reports, asked once: the daemon's first contact with the node, whose failures
    /// the caller retries with its own, longer backoff (see [`crate::sync::Indexer::run`]).
    pub async fn chain_id_once(&self) -> Result<u64, IndexerError> {
        self.provider.get_chain_id().await.map_err(|err| {
            self.metrics.rpc_error();
            IndexerError::Rpc(format!("eth_chainId: {}", describe(&err)))
        })
    }

    /// The latest block number.
    pub async fn head(&self) -> Result<u64, IndexerError> {
        self.retrying("eth_blockNumber", || self.provider.get_block_number()).await
    }

    /// The finalized block number, or `None` when the node does not support the `finalized` tag. Only an
    /// answer that rejects the tag means "unsupported"; transport failures and internal errors are retried, so a
    /// passing fault never makes the indexer treat unfinalized blocks as final.
    pub async fn finalized(&self) -> Result<Option<u64>, IndexerError> {
        let mut delay = self.retry.initial;
        let mut attempt = 1;
        loop {
            match self.provider.get_block_by_number(BlockNumberOrTag::Finalized).await {
                Ok(block) => return Ok(block.map(|b| b.header.number)),
                Err(RpcError::ErrorResp(payload)) if payload.code != INTERNAL_ERROR => {
                    debug!(%payload, "the node does not support the finalized block tag");
                    return Ok(None);
                }
                Err(err) => {
                    self.metrics.rpc_error();
                    if attempt >= self.retry.attempts {
                        return Err(IndexerError::Rpc(format!("eth_getBlockByNumber(finalized): {}", describe(&err))));
                    }
                    debug!(err = describe(&err), attempt, "reading the finalized block failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max);
                    attempt += 1;
                }
            }
        }
    }

    /// Header of block `number`.
    pub async fn header(&self, number: u64) -> Result<Header, IndexerError> {
        self.block_header(number)
            .await?
            .ok_or_else(|| IndexerError::Rpc(format!("block {number} is not available (yet)")))
    }

    /// Header of block `number`, or `None` when the node has no such block (it is above the node's head: not
    /// mined yet, or gone with a reorg to a shorter chain).
    pub async fn block_header(&self, number: u64) -> Result<Option<Header>, IndexerError> {
        let block = self
            .retrying("eth_getBlockByNumber", || async {
                self.provider.get_block_by_number(BlockNumberOrTag::Number(number)).await
            })
            .await?;
        Ok(block.map(|block| Header {
            number: block.header.number,
            hash: block.header.hash,
            parent_hash: block.header.parent_hash,
            timestamp: block.header.timestamp,
        }))
    }

    /// All logs of the followed contracts in the block with hash `hash` (EIP-234), consistent with that block.
    pub async fn logs_at(&self, hash: B256) -> Result<Vec<Log>, IndexerError> {
        let filter = Filter::new().address(self.addresses.clone()).at_block_hash(hash);
        self.retrying("eth_getLogs", || self.provider.get_logs(&filter)).await
    }

    /// The current range size the provider accepts.
    pub fn range(&self) -> u64 {
        self.range.load(Ordering::Relaxed)
    }

    /// All logs of the followed contracts in `[from, to]`, splitting the range while the provider says it is too
    /// large; the accepted size is remembered for the next ranges, shrinks toward `TARGET_LOGS_PER_RANGE` logs
    /// and grows back after answers with fewer.
    pub async fn logs(&self, from: u64, to: u64) -> Result<Vec<Log>, IndexerError> {
        let mut logs = Vec::new();
        let mut start = from;
        while start <= to {
            let mut end = to.min(start.saturating_add(self.range() - 1));
            let mut attempt = 1;
            let mut delay = self.retry.initial;
            loop {
                let filter = Filter::new().address(self.addresses.clone()).from_block(start).to_block(end);
                match self.provider.get_logs(&filter).await {
                    Ok(mut found) => {
                        let next = next_range(self.range(), end - start + 1, found.len() as u64, self.max_range);
                        self.range.store(next, Ordering::Relaxed);
                        logs.append(&mut found);
                        break;
                    }
                    Err(err) if is_too_large(&err) && end > start => {
                        self.metrics.rpc_error();
                        let smaller = suggested_end(&err, start, end).unwrap_or(start + (end - start) / 2);
                        debug!(%err, start, end, smaller, "range too large; splitting");
                        self.range.store((smaller - start + 1).max(1), Ordering::Relaxed);
                        end = smaller;
                    }
                    Err(err) => {
                        // Transient (or a single block that is still refused): retry with backoff, the same
                        // range again, which a later size error can still split.
                        self.metrics.rpc_error();
                        if attempt >= self.retry.attempts {
                            return Err(IndexerError::Rpc(format!("eth_getLogs: {}", describe(&err))));
                        }
                        debug!(err = describe(&err), attempt, start, end, "eth_getLogs failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(self.retry.max);
                        attempt += 1;
                    }
                }
            }
            start = end + 1;
        }
        Ok(logs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(message: &str) -> RpcError<TransportErrorKind> {
        RpcError::local_usage_str(message)
    }

    #[test]
    fn ranges_aim_at_a_number_of_logs() {
        // Sparse: doubles up to the maximum.
        assert_eq!(next_range(1_000, 1_000, 3, 5_000), 2_000);
        assert_eq!(next_range(4_000, 4_000, 0, 5_000), 5_000);
        // Dense: 1,000 blocks with 12,000 logs -> 833 blocks for 10,000 logs.
        assert_eq!(next_range(1_000, 1_000, 12_000, 5_000), 833);
        // Never zero, never above the maximum.
        assert_eq!(next_range(1, 1, 1_000_000, 5_000), 1);
        assert_eq!(next_range(100, 100, 20_000, 40), 40);
    }

    #[test]
    fn recognises_size_errors_by_their_text() {
        assert!(is_too_large(&err("query returned more than 10000 results")));
        assert!(is_too_large(&err("block range too large")));
        assert!(is_too_large(&err("Log response size exceeded")));
        assert!(!is_too_large(&err("connection reset by peer")));
    }

    #[test]
    fn takes_a_suggested_range_only_when_it_is_smaller() {
        let e = err("query returned more than 10000 results. Try with this block range [0x10, 0x1f].");
        assert_eq!(suggested_end(&e, 0x10, 0x40), Some(0x1f));
        // Not smaller than what was asked: ignored.
        assert_eq!(suggested_end(&e, 0x10, 0x1f), None);
        // Starts elsewhere: ignored.
        assert_eq!(suggested_end(&e, 0x11, 0x40), None);
    }
}
