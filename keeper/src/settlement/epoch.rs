//! Settlement epochs: closes not yet settled, gathered into one amount per split and one Merkle root over all
//! their lines; the epoch id is the on-chain settlement id. Which closes an epoch may gather is an
//! [`EpochScope`]: the settlement engine gathers only revenue the chain has collected.

use std::collections::BTreeMap;

use alloy::primitives::B256;
use sqlx::PgPool;

use crate::{KeeperError, merkle::MerkleTree};

/// A settlement epoch as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Epoch {
    /// Epoch number (the on-chain settlement id).
    pub epoch_id: u64,
    /// Start of the epoch window: the previous epoch's end, or the earliest period start of the first epoch.
    pub start: i64,
    /// End of the window (the time the epoch was gathered): the split versions in force then apply.
    pub end: i64,
    /// Merkle root over the lines of all its closes.
    pub usage_root: B256,
    /// Amount per split, base units.
    pub splits: BTreeMap<u64, u128>,
    /// Sum of the amounts.
    pub total: u128,
    /// Closes gathered.
    pub closes: usize,
    /// Gatherable closes were left for the next epoch because this one's `settle` would not fit a block.
    pub more: bool,
}

/// How much a `settle` transaction may credit: the gas it may use, and an upper bound of the gas per split and
/// per recipient credit. An epoch whose splits would need more is cut at a close boundary; the rest of the closes
/// make the next epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleRoom {
    /// Gas a settlement may use.
    pub gas: u64,
    /// Gas per split settled, besides its credits.
    pub per_split: u64,
    /// Gas per recipient credited.
    pub per_credit: u64,
}

impl SettleRoom {
    /// No limit (`close --epoch`, where the operator sends the settlement).
    pub const UNLIMITED: Self = Self { gas: u64::MAX, per_split: 0, per_credit: 0 };

    fn cost(&self, splits: &BTreeMap<u64, u64>) -> u64 {
        splits.values().map(|recipients| self.per_split + recipients * self.per_credit).sum()
    }
}

/// The closes (in order) whose splits fit `room`; always at least the first, which cannot be divided. `closes` are
/// (close id, the splits its lines credit); `recipients` is the recipient count per split. Returns the chosen
/// close ids and whether any was left out.
pub fn fit_closes(closes: &[(i64, Vec<u64>)], recipients: &BTreeMap<u64, u64>, room: SettleRoom) -> (Vec<i64>, bool) {
    let mut splits: BTreeMap<u64, u64> = BTreeMap::new();
    let mut chosen = Vec::new();
    for (close_id, close_splits) in closes {
        let mut with = splits.clone();
        for split in close_splits {
            with.insert(*split, recipients.get(split).copied().unwrap_or(1));
        }
        if !chosen.is_empty() && room.cost(&with) > room.gas {
            return (chosen, true);
        }
        splits = with;
        chosen.push(*close_id);
    }
    (chosen, false)
}

/// Cuts `gatherable` to the closes whose settlement fits `room`.
async fn fit_room(tx: &mut sqlx::PgConnection, gatherable: Vec<i64>, room: SettleRoom) -> Result<(Vec<i64>, bool), KeeperError> {
    if room == SettleRoom::UNLIMITED || gatherable.is_empty() {
        return Ok((gatherable, false));
    }
    let lines: Vec<(i64, String)> = sqlx::query_as(
        "SELECT DISTINCT close_id, split_id::TEXT FROM keeper.usage_lines WHERE close_id = ANY($1) AND attributed > 0 ORDER BY 1, 2",
    )
    .bind(&gatherable)
    .fetch_all(&mut *tx)
    .await?;
    let mut closes: Vec<(i64, Vec<u64>)> = gatherable.iter().map(|id| (*id, Vec::new())).collect();
    for (close_id, split) in lines {
        let split = crate::store::numeric_u64(&split, "split_id")?;
        if let Ok(i) = closes.binary_search_by_key(&close_id, |(id, _)| *id) {
            closes[i].1.push(split);
        }
    }
    // The largest recipient list of any live version: the one in force at the epoch's end is at most that long.
    let counts: Vec<(String, i32)> =
        sqlx::query_as("SELECT split_id::TEXT, MAX(cardinality(recipients)) FROM chain.split_versions_live GROUP BY split_id")
            .fetch_all(&mut *tx)
            .await?;
    let mut recipients = BTreeMap::new();
    for (split, count) in counts {
        recipients.insert(crate::store::numeric_u64(&split, "split_id")?, u64::try_from(count).unwrap_or(1));
    }
    Ok(fit_closes(&closes, &recipients, room))
}

/// Which closes an epoch gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochScope {
    /// Every close not yet in an epoch (`close --epoch`: the operator posts the charges and the settlement).
    AllClosed,
    /// Only closes whose revenue the chain has collected, as the indexer shows it (the settlement engine), so that
    /// a charge that fails (an empty wallet, a blacklisted subscriber) holds back its own close and not everyone
    /// else's settlement. While a charge is still on its way (or collected but not final) the epoch waits; a
    /// close whose charge attempt ended
    /// without collecting, or whose charge window has passed, is left out and joins a later epoch if the chain
    /// collects it after all.
    Collected {
        /// The contract's charge window, seconds after a period's end.
        charge_window: i64,
    },
}

/// Why a close is or is not gathered into an epoch under [`EpochScope::Collected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    /// No overage, or the chain has collected it: gather.
    Collected,
    /// A charge is planned, sent, or not yet tried: wait for it.
    Pending,
    /// The last attempt ended without collecting (and none is in flight), or the window has passed: leave out.
    Uncollected,
}

/// The closes an epoch may gather now under `scope`, or `None` when it should wait for a charge in flight.
async fn gatherable_closes(tx: &mut sqlx::PgConnection, chain_id: u64, now: i64, scope: EpochScope) -> Result<Option<Vec<i64>>, KeeperError> {
    let charge_window = match scope {
        EpochScope::AllClosed => i64::MAX / 2,
        EpochScope::Collected { charge_window } => charge_window,
    };
    // A charge whose receipt the outbox has seen but the indexer has not reached yet is still pending: its
    // collection is not visible in `chain` before the cursor passes its block.
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "WITH open AS (
             SELECT c.close_id, c.subscription_id, c.period_index, c.period_end, c.overage_charge, COALESCE(ch.charged, 0) AS charged
             FROM keeper.period_closes c
             LEFT JOIN chain.charged_per_period ch ON ch.chain_id = c.chain_id
                  AND ch.subscription_id = c.subscription_id::NUMERIC AND ch.period_index = c.period_index::NUMERIC
             WHERE c.chain_id = $1 AND NOT EXISTS (SELECT 1 FROM keeper.epoch_closes e WHERE e.close_id = c.close_id)
         ), attempts AS (
             -- Attempts at the close's own charge: threshold charges made before the close (smaller cumulative
             -- amounts) do not count as attempts at it.
             SELECT i.subscription_id, i.period_index, i.cumulative,
                    i.state IN ('planned', 'sent')
                      OR (i.state = 'confirmed' AND i.block_number > COALESCE(
                          (SELECT MAX(d.cursor_number) FROM chain.deployments d WHERE d.chain_id = $1), -1)) AS in_flight
             FROM keeper.charge_items i
         ), tried AS (
             SELECT o.close_id, BOOL_OR(a.in_flight) AS in_flight
             FROM open o JOIN attempts a ON a.subscription_id = o.subscription_id AND a.period_index = o.period_index
                                        AND a.cumulative >= o.overage_charge
             GROUP BY o.close_id
         )
         SELECT o.close_id,
                CASE WHEN o.charged >= o.overage_charge AND NOT ($2 AND EXISTS (
                              -- Indexed, but not final yet: a reorg could still drop it. An epoch is never gathered
                              -- again, so it waits until the charges it counts on are final.
                              SELECT 1 FROM keeper.charge_items i WHERE i.state = 'sent'
                                AND i.subscription_id = o.subscription_id AND i.period_index = o.period_index))
                          THEN 'collected'
                     WHEN o.charged >= o.overage_charge THEN 'pending'
                     -- The contract still charges at end + window + paused (`_windowOver(end, window + 1)`), and a
                     -- later block may carry the same second: only a second past that is the window over.
                     WHEN $2 AND o.period_end + $3 + chain.paused_seconds($1, o.period_end, $4) < $4 THEN 'uncollected'
                     WHEN $2 AND t.in_flight IS NOT NULL AND NOT t.in_flight THEN 'uncollected'
                     WHEN $2 THEN 'pending'
                     ELSE 'collected' END
         FROM open o LEFT JOIN tried t USING (close_id)
         ORDER BY o.close_id",
    )
    .bind(chain_id as i64)
    .bind(matches!(scope, EpochScope::Collected { .. }))
    .bind(charge_window)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let classified: Vec<(i64, Collection)> = rows
        .into_iter()
        .map(|(id, class)| {
            let class = match class.as_str() {
                "collected" => Collection::Collected,
                "pending" => Collection::Pending,
                _ => Collection::Uncollected,
            };
            (id, class)
        })
        .collect();
    if classified.iter().any(|(_, class)| *class == Collection::Pending) {
        return Ok(None);
    }
    Ok(Some(classified.into_iter().filter(|(_, class)| *class == Collection::Collected).map(|(id, _)| id).collect()))
}

/// The split versions the chain knows (not cancelled): split id -> every version's effective time, ascending.
async fn split_effective_times(tx: &mut sqlx::PgConnection, chain_id: u64) -> Result<BTreeMap<u64, Vec<i64>>, KeeperError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT split_id::TEXT, effective_at::TEXT FROM chain.split_versions_live WHERE chain_id = $1 ORDER BY 1, 2",
    )
    .bind(chain_id as i64)
    .fetch_all(&mut *tx)
    .await?;
    let mut times: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for (split, at) in rows {
        let at = i64::try_from(crate::store::numeric_u64(&at, "effective_at")?)
            .map_err(|_| KeeperError::ChainData(format!("split {split}: effective time {at} is out of range")))?;
        times.entry(crate::store::numeric_u64(&split, "split_id")?).or_default().push(at);
    }
    for list in times.values_mut() {
        list.sort_unstable();
    }
    Ok(times)
}

/// The window of an epoch, as the escrow accepts it: consecutive epochs, and one version of every split in force
/// for the whole window. `start` is the previous epoch's end, or (for the first epoch) chosen so that every split the
/// closes credit is in force for the whole window. The window ends `now`, or earlier at the first split version that
/// takes effect inside it (any split: the next epoch then starts there, under the new version). Closes that credit a
/// split with no version in force at `start` wait for a later epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochWindow {
    /// Start (inclusive).
    pub start: i64,
    /// End (exclusive).
    pub end: i64,
    /// The closes it may gather, in order.
    pub closes: Vec<i64>,
}

/// See [`EpochWindow`]. `closes` are (close id, the splits its lines credit, its earliest period start);
/// `effective` every split's version effective times; `previous_end` the last epoch's end.
pub fn epoch_window(closes: &[(i64, Vec<u64>, i64)], effective: &BTreeMap<u64, Vec<i64>>, previous_end: Option<i64>, now: i64) -> Option<EpochWindow> {
    // The newest version of `split` in force at `t`.
    let in_force = |split: &u64, t: i64| effective.get(split).and_then(|times| times.iter().rev().find(|at| **at <= t).copied());
    let start = match previous_end {
        Some(end) => end,
        None => {
            // The first epoch may start anywhere: at the earliest period it settles, but no earlier than the newest
            // version (in force now) of any split it credits, so that each is in force for the whole window.
            let ready: Vec<_> = closes.iter().filter(|(_, splits, _)| splits.iter().all(|s| in_force(s, now - 1).is_some())).collect();
            let first_period = ready.iter().map(|(_, _, period_start)| *period_start).min()?;
            let newest_version = ready.iter().flat_map(|(_, splits, _)| splits.iter().filter_map(|s| in_force(s, now - 1))).max();
            newest_version.map_or(first_period, |at| first_period.max(at))
        }
    };
    let end = effective.values().flatten().copied().filter(|at| *at > start && *at < now).min().unwrap_or(now);
    if end <= start {
        return None;
    }
    let chosen: Vec<i64> = closes
        .iter()
        .filter(|(_, splits, _)| splits.iter().all(|s| in_force(s, start).is_some()))
        .map(|(id, _, _)| *id)
        .collect();
    Some(EpochWindow { start, end, closes: chosen })
}

/// The splits each gatherable close credits and its earliest period start.
async fn close_splits(tx: &mut sqlx::PgConnection, gatherable: &[i64]) -> Result<Vec<(i64, Vec<u64>, i64)>, KeeperError> {
    let rows: Vec<(i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT c.close_id, c.period_start, l.split_id::TEXT
         FROM keeper.period_closes c LEFT JOIN keeper.usage_lines l ON l.close_id = c.close_id AND l.attributed > 0
         WHERE c.close_id = ANY($1) ORDER BY 1, 3",
    )
    .bind(gatherable)
    .fetch_all(&mut *tx)
    .await?;
    let mut closes: Vec<(i64, Vec<u64>, i64)> = Vec::new();
    for (close_id, period_start, split) in rows {
        if closes.last().is_none_or(|(id, _, _)| *id != close_id) {
            closes.push((close_id, Vec::new(), period_start));
        }
        if let Some(split) = split {
            let split = crate::store::numeric_u64(&split, "split_id")?;
            let entry = closes.last_mut().expect("pushed above");
            if !entry.1.contains(&split) {
                entry.1.push(split);
            }
        }
    }
    Ok(closes)
}

/// Gathers the closes not yet in an epoch that `scope` allows, as many as `room` lets one `settle` credit, into a
/// new epoch whose window the escrow accepts ([`EpochWindow`]); `None` when there is none (or, under
/// [`EpochScope::Collected`], while a charge is still on its way).
pub async fn close_epoch(pool: &PgPool, chain_id: u64, now: i64, scope: EpochScope, room: SettleRoom) -> Result<Option<Epoch>, KeeperError> {
    let mut tx = pool.begin().await?;
    // One epoch closer at a time: the epoch number and the set of closes are decided under this lock.
    sqlx::query("LOCK TABLE keeper.epochs IN EXCLUSIVE MODE").execute(&mut *tx).await?;
    let Some(gatherable) = gatherable_closes(&mut tx, chain_id, now, scope).await? else { return Ok(None) };
    if gatherable.is_empty() {
        return Ok(None);
    }
    let (epoch_id, previous_end): (i64, Option<i64>) =
        sqlx::query_as("SELECT COALESCE(MAX(epoch_id), 0) + 1, MAX(closed_at) FROM keeper.epochs WHERE chain_id = $1")
            .bind(chain_id as i64)
            .fetch_one(&mut *tx)
            .await?;
    let effective = split_effective_times(&mut tx, chain_id).await?;
    let closes = close_splits(&mut tx, &gatherable).await?;
    let Some(window) = epoch_window(&closes, &effective, previous_end, now) else { return Ok(None) };
    let (gatherable, more) = fit_room(&mut tx, window.closes, room).await?;
    let rows: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT c.close_id, l.split_id::TEXT, l.attributed::TEXT, l.leaf
         FROM keeper.period_closes c JOIN keeper.usage_lines l USING (close_id)
         WHERE c.close_id = ANY($1)",
    )
    .bind(&gatherable)
    .fetch_all(&mut *tx)
    .await?;
    // Nothing to gather in this window: wait, unless the window was cut at a split change, in which case an empty
    // epoch moves the escrow's epoch start past it (the closes waiting for that split go into the next one).
    if rows.is_empty() && window.end == now {
        return Ok(None);
    }
    let mut splits: BTreeMap<u64, u128> = BTreeMap::new();
    let mut close_ids = Vec::new();
    let mut leaves = Vec::with_capacity(rows.len());
    for (close_id, split, attributed, leaf) in rows {
        let amount = crate::store::numeric_u128(&attributed, "attributed")?;
        if amount > 0 {
            *splits.entry(crate::store::numeric_u64(&split, "split_id")?).or_default() += amount;
        }
        close_ids.push(close_id);
        leaves.push(B256::from_slice(&leaf));
    }
    close_ids.sort_unstable();
    close_ids.dedup();
    let total: u128 = splits.values().sum();
    let usage_root = MerkleTree::new(&leaves).root();
    let (start, end) = (window.start, window.end);
    sqlx::query(
        "INSERT INTO keeper.epochs (epoch_id, chain_id, epoch_start, closed_at, usage_root, total, more)
         VALUES ($1, $2, $3, $4, $5, $6::NUMERIC, $7)",
    )
        .bind(epoch_id)
        .bind(chain_id as i64)
        .bind(start)
        .bind(end)
        .bind(usage_root.as_slice())
        .bind(total.to_string())
        .bind(more)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO keeper.epoch_closes (epoch_id, close_id) SELECT $1, UNNEST($2::BIGINT[])")
        .bind(epoch_id)
        .bind(&close_ids)
        .execute(&mut *tx)
        .await?;
    let split_ids: Vec<String> = splits.keys().map(u64::to_string).collect();
    let amounts: Vec<String> = splits.values().map(u128::to_string).collect();
    sqlx::query("INSERT INTO keeper.epoch_splits (epoch_id, split_id, amount) SELECT $1, * FROM UNNEST($2::NUMERIC[], $3::NUMERIC[])")
        .bind(epoch_id)
        .bind(&split_ids)
        .bind(&amounts)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(Epoch { epoch_id: epoch_id as u64, start, end, usage_root, splits, total, closes: close_ids.len(), more }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_epoch_starts_where_every_split_it_credits_is_in_force() {
        let effective = BTreeMap::from([(1, vec![100]), (2, vec![90, 130])]);
        let closes = vec![(10, vec![1], 50), (11, vec![2], 60)];
        let window = epoch_window(&closes, &effective, None, 200).unwrap();
        assert_eq!(window, EpochWindow { start: 130, end: 200, closes: vec![10, 11] }, "split 2's version 1 took effect at 130");
        // Before any split is in force there is no epoch.
        assert_eq!(epoch_window(&closes, &BTreeMap::from([(1, vec![300]), (2, vec![300])]), None, 200), None);
    }

    #[test]
    fn an_epoch_ends_where_a_split_version_takes_effect_and_new_splits_wait() {
        let effective = BTreeMap::from([(1, vec![0, 150]), (2, vec![140])]);
        let closes = vec![(10, vec![1], 50), (11, vec![2], 60), (12, vec![], 70)];
        // From the previous end (120): cut at split 2's first version (140); its close waits.
        assert_eq!(epoch_window(&closes, &effective, Some(120), 200), Some(EpochWindow { start: 120, end: 140, closes: vec![10, 12] }));
        // The next window: cut again at split 1's change (150); split 2 is in force now.
        assert_eq!(epoch_window(&closes, &effective, Some(140), 200), Some(EpochWindow { start: 140, end: 150, closes: vec![10, 11, 12] }));
        assert_eq!(epoch_window(&closes, &effective, Some(150), 200), Some(EpochWindow { start: 150, end: 200, closes: vec![10, 11, 12] }));
        // A window that would be empty is no window.
        assert_eq!(epoch_window(&closes, &effective, Some(200), 200), None);
    }

    #[test]
    fn an_epoch_is_cut_at_a_close_when_its_settlement_would_not_fit() {
        let recipients = BTreeMap::from([(1, 3), (2, 3), (3, 1)]);
        let closes = vec![(10, vec![1]), (11, vec![1, 2]), (12, vec![3]), (13, vec![1])];
        let room = |gas| SettleRoom { gas, per_split: 5, per_credit: 20 };
        // Split 1 costs 65, split 2 65, split 3 25.
        assert_eq!(fit_closes(&closes, &recipients, room(1_000)), (vec![10, 11, 12, 13], false));
        assert_eq!(fit_closes(&closes, &recipients, room(130)), (vec![10, 11], true), "split 3 would make 155");
        assert_eq!(fit_closes(&closes, &recipients, room(155)), (vec![10, 11, 12, 13], false), "close 13 adds no split");
        assert_eq!(fit_closes(&closes, &recipients, room(10)), (vec![10], true), "a close is never divided");
        assert_eq!(fit_closes(&[], &recipients, room(10)), (vec![], false));
    }
}
