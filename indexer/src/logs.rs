//! A range's logs as the node returned them, checked and turned into the raw and typed rows of one commit.

use std::collections::HashMap;

use alloy::{primitives::Address, rpc::types::Log};
use subsettle_abi::Deployment;

use crate::{
    IndexerError,
    decode::{Source, decode},
    rows::LogPosition,
    source::{ChainSource, Header},
    store::{Batch, RawLog},
};

/// Turns logs into raw and typed rows, validating what the node returned.
pub(crate) async fn batch(source: &ChainSource, deployment: &Deployment, logs: &[Log], header: Option<&Header>) -> Result<Batch, IndexerError> {
    let mut batch = Batch::default();
    let mut times: HashMap<u64, u64> = HashMap::new();
    if let Some(header) = header {
        times.insert(header.number, header.timestamp);
    }
    for log in logs {
        let invalid = |what: &str| IndexerError::InvalidRpcAnswer(format!("a log without {what}: {log:?}"));
        if log.removed {
            return Err(IndexerError::InvalidRpcAnswer(format!("a removed log in a canonical range: {log:?}")));
        }
        let contract = source_of(deployment, log.address())?;
        let block_number = log.block_number.ok_or_else(|| invalid("a block number"))?;
        let block_time = match (log.block_timestamp, times.get(&block_number)) {
            (Some(time), _) => time,
            (None, Some(time)) => *time,
            (None, None) => {
                let time = source.header(block_number).await?.timestamp;
                times.insert(block_number, time);
                time
            }
        };
        let position = LogPosition {
            chain_id: to_i64(deployment.chain_id),
            block_number: to_i64(block_number),
            log_index: i32::try_from(log.log_index.ok_or_else(|| invalid("a log index"))?)
                .map_err(|_| invalid("a log index that fits 32 bits"))?,
            tx_hash: log.transaction_hash.ok_or_else(|| invalid("a transaction hash"))?.to_vec(),
            block_time: to_i64(block_time),
        };
        batch.raw.push(RawLog {
            block_number: position.block_number,
            log_index: position.log_index,
            block_hash: log.block_hash.ok_or_else(|| invalid("a block hash"))?.to_vec(),
            block_time: position.block_time,
            tx_hash: position.tx_hash.clone(),
            tx_index: i32::try_from(log.transaction_index.ok_or_else(|| invalid("a transaction index"))?)
                .map_err(|_| invalid("a transaction index that fits 32 bits"))?,
            address: log.address().to_vec(),
            topics: log.topics().iter().map(|t| t.to_vec()).collect(),
            data: log.data().data.to_vec(),
        });
        batch.typed.push(decode(contract, position, &log.inner)?);
    }
    Ok(batch)
}

fn source_of(deployment: &Deployment, address: Address) -> Result<Source, IndexerError> {
    if address == deployment.subscriptions {
        Ok(Source::Subscriptions)
    } else if address == deployment.escrow {
        Ok(Source::Escrow)
    } else {
        Err(IndexerError::InvalidRpcAnswer(format!("a log from {address}, which this deployment does not follow")))
    }
}

/// Block numbers and timestamps stay far below 2^63 on any real chain.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
