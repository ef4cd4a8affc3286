//! The keeper's side: what it decided (period closes, epochs), whether its outbox saw that confirmed by the
//! reconciled block, and every party's statement with its verification.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, B256};
use sqlx::PgPool;

use crate::{
    KeeperError,
    metering::statement::{self, ChargeClock, Party, Scope, Statement, Verification},
};

/// A period close's overage charge.
#[derive(Debug, Clone)]
pub(super) struct KeeperCharge {
    /// `overage_charge`: the capped cumulative overage the keeper decided to charge.
    pub(super) charge: String,
    /// Whether a `charge` action covering the period was confirmed at or before the reconciled block.
    pub(super) confirmed: bool,
    /// The newest charge action's state, for pending work.
    pub(super) last_state: Option<String>,
    /// The period's end (Unix seconds): its charge window runs from here.
    pub(super) period_end: i64,
    /// The plan fee collected for the period.
    pub(super) fee: String,
    /// The reason of the newest `UsageChargeFailed` for the period indexed by the reconciled block, if any.
    pub(super) last_failure: Option<String>,
}

/// A settlement epoch.
#[derive(Debug, Clone)]
pub(super) struct KeeperEpoch {
    /// Total settled over the splits.
    pub(super) total: String,
    /// The epoch's usage root.
    pub(super) root: B256,
    /// Whether an attempt at settling it (`settle:<id>`, `settle:<id>:<attempt>`) was confirmed at or before the
    /// reconciled block.
    pub(super) confirmed: bool,
    /// The newest attempt's key and outbox state, when planned.
    pub(super) state: Option<String>,
}

/// The keeper's books as the checks need them.
#[derive(Debug)]
pub(super) struct Books {
    /// Overage charge per closed (subscription, period).
    pub(super) charges: BTreeMap<(u64, u64), KeeperCharge>,
    /// Epochs by id (= settlement id).
    pub(super) epochs: BTreeMap<u64, KeeperEpoch>,
    /// Subscribers with a closed period.
    pub(super) subscribers: BTreeSet<Address>,
}

impl Books {
    pub(super) async fn load(pool: &PgPool, chain_id: u64, block: u64) -> Result<Self, KeeperError> {
        type CloseRow = (i64, i64, Vec<u8>, String, bool, Option<String>, i64, String, Option<String>);
        let closes: Vec<CloseRow> = sqlx::query_as(
            "WITH items AS (
                 SELECT state, block_number, planned_at, subscription_id AS id, period_index AS period, cumulative FROM keeper.charge_items
             )
             SELECT c.subscription_id, c.period_index, c.subscriber, c.overage_charge::TEXT,
                    -- The close's own charge: a threshold charge before it (a smaller cumulative) does not count.
                    EXISTS (SELECT 1 FROM items i WHERE i.id = c.subscription_id AND i.period = c.period_index
                              AND i.cumulative >= c.overage_charge AND i.state = 'confirmed' AND i.block_number <= $2),
                    (SELECT i.state || COALESCE(' in block ' || i.block_number, '') FROM items i
                     WHERE i.id = c.subscription_id AND i.period = c.period_index ORDER BY i.planned_at DESC LIMIT 1),
                    c.period_end, c.fee::TEXT,
                    (SELECT f.reason FROM chain.usage_charge_failures f
                     WHERE f.chain_id = c.chain_id AND f.subscription_id = c.subscription_id::NUMERIC
                       AND f.period_index = c.period_index::NUMERIC AND f.block_number <= $2
                     ORDER BY f.block_number DESC, f.log_index DESC LIMIT 1)
             FROM keeper.period_closes c WHERE c.chain_id = $1",
        )
        .bind(chain_id as i64)
        .bind(block as i64)
        .fetch_all(pool)
        .await?;
        type EpochRow = (i64, String, Vec<u8>, Option<String>, bool);
        let epochs: Vec<EpochRow> = sqlx::query_as(
            "SELECT e.epoch_id, e.total::TEXT, e.usage_root,
                    (SELECT a.state || ' (' || a.action_key || ')' FROM keeper.settle_attempts a
                     WHERE a.epoch_id = e.epoch_id ORDER BY a.planned_at DESC, a.action_key DESC LIMIT 1),
                    EXISTS (SELECT 1 FROM keeper.settle_attempts a
                            WHERE a.epoch_id = e.epoch_id AND a.state = 'confirmed' AND a.block_number <= $2)
             FROM keeper.epochs e WHERE e.chain_id = $1",
        )
        .bind(chain_id as i64)
        .bind(block as i64)
        .fetch_all(pool)
        .await?;
        let mut books = Self { charges: BTreeMap::new(), epochs: BTreeMap::new(), subscribers: BTreeSet::new() };
        for (id, period, subscriber, charge, confirmed, last_state, period_end, fee, last_failure) in closes {
            let subscriber = Address::try_from(subscriber.as_slice()).map_err(|_| KeeperError::ChainData(format!("close {id}/{period}: subscriber is not 20 bytes")))?;
            books.subscribers.insert(subscriber);
            books.charges.insert((id as u64, period as u64), KeeperCharge { charge, confirmed, last_state, period_end, fee, last_failure });
        }
        // Running periods charged mid-period (`--charge-threshold`): the keeper's figure is the largest threshold
        // charge confirmed by the reconciled block.
        let running: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT subscription_id, period_index, MAX(cumulative)::TEXT FROM keeper.charge_items
             WHERE starts_with(action_key, $2) AND state = 'confirmed' AND block_number <= $1
             GROUP BY 1, 2",
        )
        .bind(block as i64)
        .bind(format!("{}:", crate::settlement::threshold::KEY_PREFIX))
        .fetch_all(pool)
        .await?;
        for (id, period, charge) in running {
            let last_state = Some("confirmed (a threshold charge)".to_owned());
            let running = KeeperCharge { charge, confirmed: true, last_state, period_end: 0, fee: "0".into(), last_failure: None };
            books.charges.entry((id as u64, period as u64)).or_insert(running);
        }
        for (id, total, root, state, confirmed) in epochs {
            let root = B256::try_from(root.as_slice()).map_err(|_| KeeperError::ChainData(format!("epoch {id}: usage root is not 32 bytes")))?;
            books.epochs.insert(id as u64, KeeperEpoch { total, root, confirmed, state });
        }
        Ok(books)
    }
}

/// A party's statement and what [`statement::verify`] found, or why it could not be built.
#[derive(Debug)]
pub(super) struct PartyStatement {
    pub(super) party: Party,
    pub(super) address: Address,
    pub(super) outcome: Result<(Statement, Verification), String>,
}

/// Builds and verifies the statement of every subscriber and every recipient (all of time), judging charge windows
/// at `clock` (the reconciled block's) as the charged check does. A statement that
/// cannot be built is an outcome to report; only a failing database stops the run.
pub(super) async fn statements(
    pool: &PgPool,
    chain_id: u64,
    decimals: u32,
    subscribers: &[Address],
    recipients: &[Address],
    clock: &ChargeClock,
) -> Result<Vec<PartyStatement>, KeeperError> {
    let parties = subscribers.iter().map(|a| (Party::Subscriber, *a)).chain(recipients.iter().map(|a| (Party::Creator, *a)));
    let mut out = Vec::new();
    for (party, address) in parties {
        let built = match party {
            Party::Subscriber => statement::subscriber_statement_at(pool, chain_id, decimals, address, Scope::default(), Some(clock)).await,
            Party::Creator => statement::creator_statement(pool, chain_id, decimals, address, Scope::default()).await,
        };
        let outcome = match built {
            Ok(statement) => match statement::verify_at(pool, &statement, Some(clock)).await {
                Ok(check) => Ok((statement, check)),
                Err(e @ KeeperError::Database(_)) => return Err(e),
                Err(e) => Err(format!("could not be verified: {e}")),
            },
            Err(e @ KeeperError::Database(_)) => return Err(e),
            Err(e) => Err(format!("could not be built: {e}")),
        };
        out.push(PartyStatement { party, address, outcome });
    }
    Ok(out)
}
