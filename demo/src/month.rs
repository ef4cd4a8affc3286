//! A compressed month, played against the running daemons: subscribers sign up, four weeks of traffic, the
//! renewal day (renewals, a failed pull, usage charges up to the caps), a top-up inside the grace period, a lapse,
//! settlement and payouts, and a last week in which the lapsed and the cancelled are refused with 402.
//! The demo only moves the chain's clock and acts as the subscribers; every other step is the daemons' own.

use std::time::Duration;

use anyhow::{Context, ensure};
use sqlx::PgPool;

use crate::{
    USDC,
    cast::{PlanKind, Profile, Role},
    timeline::{DAY, Progress, advance, wait_for},
    traffic::{Tally, UsageApi, week_events},
    wallets::Chain,
};

/// A plan as the operator created it.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// On-chain id.
    pub id: u64,
    /// Price per period, base units.
    pub price: u64,
    /// Period length, seconds.
    pub period: u64,
    /// Grace period, seconds.
    pub grace: u64,
}

/// The keeper's settings the demo has to know to move time far enough.
#[derive(Debug, Clone, Copy)]
pub struct KeeperPolicy {
    /// Late-event cutoff after a period's end, seconds.
    pub late_cutoff: u64,
    /// Time between two attempts at a past-due renewal, seconds.
    pub retry_interval: u64,
    /// Recipients with at least this claimable are paid by the keeper, base units.
    pub payout_threshold: u128,
    /// The keeper charges overage mid-period at multiples of this (base units), if set.
    pub charge_threshold: Option<u128>,
    /// Longest wait for one thing the daemons should do.
    pub timeout: Duration,
}

/// Everything the month needs.
#[derive(Debug)]
pub struct Month {
    /// The chain.
    pub chain: Chain,
    /// The keeper's usage API.
    pub api: UsageApi,
    /// The database both daemons write.
    pub pool: PgPool,
    /// The subscribers.
    pub people: Vec<Profile>,
    /// The monthly plan with included usage.
    pub pro: Plan,
    /// The pay-as-you-go plan.
    pub payg: Plan,
    /// What the keeper was started with.
    pub policy: KeeperPolicy,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Played {
    /// Subscription id per subscriber index.
    pub ids: Vec<u64>,
    /// Chain time when everyone had subscribed.
    pub start: u64,
    /// The keeper's answers to the traffic.
    pub tally: Tally,
}

fn say(text: &str) {
    eprintln!("\x1b[1m==> {text}\x1b[0m");
}

impl Month {
    /// Plays the month.
    pub async fn play(&self) -> anyhow::Result<Played> {
        let progress = Progress::default();
        let mut played = Played::default();
        say(&format!("{} subscribers approve once and subscribe", self.people.len()));
        played.ids = self.subscribe_everyone(&progress).await?;
        played.start = self.chain.now().await?;
        self.wait_until_served(&progress, &played).await?;
        for week in 1..=4 {
            say(&format!("week {week}: usage from the marketplace's gateway to the keeper's API"));
            self.week(&progress, &mut played, week).await?;
        }
        say("the period ends: renewals, a failed pull, usage charges up to each cap");
        self.renewal_day(&progress, &played).await?;
        say("the subscriber who ran out tops up inside the grace period");
        self.top_up(&progress, &played).await?;
        say("the grace period ends for the one who did not");
        self.lapse(&progress, &played).await?;
        say("settlement into the escrow and payouts to creators");
        self.settle_and_pay(&progress).await?;
        say("the next week: the lapsed and the cancelled are refused with 402");
        self.after_the_month(&progress, &mut played).await?;
        Ok(played)
    }

    fn plan_of(&self, profile: &Profile) -> Plan {
        match profile.plan {
            PlanKind::Pro => self.pro,
            PlanKind::PayAsYouGo => self.payg,
        }
    }

    fn who(&self, role: Role) -> &Profile {
        self.people.iter().find(|p| p.role == role).expect("every role is in the cast")
    }

    async fn subscribe_everyone(&self, progress: &Progress) -> anyhow::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for profile in &self.people {
            let plan = self.plan_of(profile);
            self.chain.fund(profile.signer.address(), profile.funding).await?;
            let id = self.chain.subscribe(profile, plan.id, plan.price).await.with_context(|| format!("subscriber {}", profile.index))?;
            ids.push(id);
            progress.update(&format!("{}/{} subscribed", ids.len(), self.people.len()));
        }
        let permits = self.people.iter().filter(|p| p.permit).count();
        progress.done(&format!("{} subscriptions: {} approved with a transaction, {permits} with a permit signature", ids.len(), ids.len() - permits));
        Ok(ids)
    }

    /// Waits until the indexer has every subscription and the keeper's API serves the last subscriber.
    async fn wait_until_served(&self, progress: &Progress, played: &Played) -> anyhow::Result<()> {
        let last = self.people.last().expect("a cast").signer.address();
        let expected = played.ids.len() as i64;
        wait_for(progress, "the indexer and the keeper see every subscription", self.policy.timeout, || async move {
            let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain.subscribed").fetch_one(&self.pool).await?;
            let answer = self.api.entitlement(last).await?;
            Ok((indexed < expected || answer["entitled"] != true).then(|| format!("{indexed}/{expected} indexed")))
        })
        .await
    }

    /// Moves the chain's clock to `to` (if it is not there yet) and waits until the keeper's clock follows.
    /// `start` is day 0 of the month, for the progress line.
    async fn move_clock_to(&self, progress: &Progress, start: u64, to: u64) -> anyhow::Result<u64> {
        let now = self.chain.now().await?;
        let now = if to > now { advance(&self.chain, to - now).await? } else { now };
        let probe = self.people[0].signer.address();
        let label = format!("the chain's clock moves to day {:.1}; the keeper follows", now.saturating_sub(start) as f64 / DAY as f64);
        wait_for(progress, &label, self.policy.timeout, || async move {
            let answer = self.api.entitlement(probe).await?;
            let as_of = answer["as_of"].as_u64().context("the entitlement answer has no as_of")?;
            Ok((as_of < now).then(|| format!("keeper at {as_of}, chain at {now}")))
        })
        .await?;
        Ok(now)
    }

    async fn week(&self, progress: &Progress, played: &mut Played, week: u32) -> anyhow::Result<()> {
        let week_secs = 7 * DAY;
        let now = self.move_clock_to(progress, played.start, played.start + u64::from(week) * week_secs).await?;
        let mid_period = self.threshold_charges(progress, played, now).await?;
        let events = week_events(&self.people, week, played.start + u64::from(week - 1) * week_secs, week_secs);
        let before = played.tally.clone();
        self.api.post(&events, &mut played.tally).await?;
        let mut line = format!("{} events accepted", played.tally.accepted - before.accepted);
        let refused = played.tally.payment_required - before.payment_required;
        if refused > 0 {
            // The keeper stops serving a subscriber whose overage has reached the cap they set: nothing is
            // consumed that could not be charged.
            let who: Vec<String> = played
                .tally
                .refused_by_subscriber
                .iter()
                .filter(|(i, n)| before.refused_by_subscriber.get(i) != Some(n))
                .map(|(i, _)| format!("{i} ({})", self.people[*i].role.label()))
                .collect();
            line.push_str(&format!("; {refused} refused with 402: overage cap reached for subscriber {}", who.join(", ")));
        }
        if week == 1 {
            // A gateway that times out resends: the keeper stores each event once.
            let resent = &events[..events.len().min(100)];
            self.api.post(resent, &mut played.tally).await?;
            ensure!(played.tally.duplicates - before.duplicates == resent.len(), "a resend was not recognised as one");
            line.push_str(&format!("; {} resent by a retrying gateway, all recognised as duplicates", resent.len()));
        }
        if !mid_period.is_empty() {
            line.push_str(&format!("; charged mid-period for the usage so far: {}", mid_period.join(", ")));
        }
        if week == 2 {
            let quitter = self.who(Role::Cancels);
            self.chain.cancel(quitter, played.ids[quitter.index]).await?;
            line.push_str(&format!("; subscriber {} cancelled (access until the end of the paid period)", quitter.index));
        }
        progress.done(&line);
        Ok(())
    }

    /// With threshold charges on: waits until the keeper has evaluated the retry slot of `now` and its charges
    /// are confirmed and indexed, and returns them as "subscriber (amount)".
    async fn threshold_charges(&self, progress: &Progress, played: &Played, now: u64) -> anyhow::Result<Vec<String>> {
        if self.policy.charge_threshold.is_none() {
            return Ok(Vec::new());
        }
        let slot = subsettle_keeper::settlement::outbox::retry_slot(i64::try_from(now)?, i64::try_from(self.policy.retry_interval)?);
        let threshold_keys = format!("{}:", subsettle_keeper::settlement::threshold::KEY_PREFIX);
        let threshold_keys = &threshold_keys;
        wait_for(progress, "the keeper's threshold charges for the usage so far", self.policy.timeout, || async move {
            let (evaluated, open, unindexed): (bool, i64, i64) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM keeper.threshold_evaluations WHERE slot = $1),
                        (SELECT COUNT(*) FROM keeper.outbox WHERE starts_with(action_key, $2) AND state IN ('planned', 'sent')),
                        (SELECT COUNT(*) FROM keeper.threshold_charges t WHERE NOT EXISTS (
                            SELECT 1 FROM chain.charged_per_period c WHERE c.subscription_id = t.subscription_id::NUMERIC
                              AND c.period_index = t.period_index::NUMERIC AND c.charged >= t.cumulative))",
            )
            .bind(slot)
            .bind(threshold_keys)
            .fetch_one(&self.pool)
            .await?;
            Ok((!evaluated || open + unindexed > 0).then(|| format!("evaluated: {evaluated}, {open} in flight, {unindexed} not indexed")))
        })
        .await?;
        let charged: Vec<(i64, String)> = sqlx::query_as(
            "SELECT subscription_id, cumulative::TEXT FROM keeper.threshold_charges WHERE computed_at >= $1 ORDER BY subscription_id",
        )
        .bind(i64::try_from(now)?)
        .fetch_all(&self.pool)
        .await?;
        Ok(charged
            .into_iter()
            .filter_map(|(id, amount)| {
                let index = played.ids.iter().position(|i| *i as i64 == id)?;
                Some(format!("subscriber {index} ({})", crate::usdc(amount.parse().ok()?)))
            })
            .collect())
    }

    async fn status_of(&self, id: u64) -> anyhow::Result<(String, i64)> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT status, period_index::TEXT FROM chain.subscriptions WHERE subscription_id = $1::NUMERIC")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        let (status, period) = row.with_context(|| format!("subscription {id} is not indexed"))?;
        Ok((status, period.parse()?))
    }

    /// Waits until subscription `id` has `status` and has been renewed into at least `period`.
    async fn wait_status(&self, progress: &Progress, what: &str, id: u64, status: &str, period: i64) -> anyhow::Result<()> {
        wait_for(progress, what, self.policy.timeout, || async move {
            let (now, index) = self.status_of(id).await?;
            Ok((now != status || index < period).then(|| format!("subscription {id} is {now} in period {index}")))
        })
        .await
    }

    async fn renewal_day(&self, progress: &Progress, played: &Played) -> anyhow::Result<()> {
        self.move_clock_to(progress, played.start, played.start + self.pro.period + self.policy.late_cutoff + 120).await?;
        let expected: Vec<(u64, &str, i64)> = self
            .people
            .iter()
            .map(|p| {
                let id = played.ids[p.index];
                match p.role {
                    Role::RunsOut | Role::Lapses => (id, "past_due", 0),
                    Role::Cancels => (id, "cancelled", 0),
                    _ => (id, "active", 1),
                }
            })
            .collect();
        let expected = &expected;
        wait_for(progress, "the keeper renews every due subscription (two pulls fail: past due)", self.policy.timeout, || async move {
            let mut waiting = 0;
            for (id, status, period) in expected {
                let (now, index) = self.status_of(*id).await?;
                waiting += usize::from(now != *status || index < *period);
            }
            Ok((waiting > 0).then(|| format!("{waiting} of {} not there yet", expected.len())))
        })
        .await?;
        let closes = played.ids.len() as i64;
        wait_for(progress, "the keeper closes every period and charges the overage up to each cap", self.policy.timeout, || async move {
            let (closed, uncharged): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE c.overage_charge > 0 AND COALESCE(p.charged, 0) < c.overage_charge)
                 FROM keeper.period_closes c
                 LEFT JOIN chain.charged_per_period p
                   ON p.chain_id = c.chain_id AND p.subscription_id = c.subscription_id AND p.period_index = c.period_index
                 WHERE c.period_index = 0",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok((closed < closes || uncharged > 0).then(|| format!("{closed}/{closes} closed, {uncharged} charges not indexed yet")))
        })
        .await
    }

    async fn top_up(&self, progress: &Progress, played: &Played) -> anyhow::Result<()> {
        let late = self.who(Role::RunsOut);
        self.chain.mint(late.signer.address(), 100 * USDC).await?;
        let id = played.ids[late.index];
        // The keeper retries a past-due renewal once per retry interval, not on every step: move to the next slot
        // (once more if the keeper had already used that slot before it saw the top-up).
        for attempt in 1..=3 {
            let now = self.chain.now().await?;
            self.move_clock_to(progress, played.start, now + self.policy.retry_interval + 60).await?;
            let what = format!("the keeper's next retry renews subscription {id} (attempt {attempt})");
            let waited = wait_for(progress, &what, Duration::from_secs(20), || async move {
                let (status, index) = self.status_of(id).await?;
                Ok((status != "active" || index < 1).then(|| format!("{status} in period {index}")))
            })
            .await;
            if waited.is_ok() {
                return Ok(());
            }
        }
        anyhow::bail!("subscription {id} topped up inside its grace period but was not renewed after three retry slots")
    }

    async fn lapse(&self, progress: &Progress, played: &Played) -> anyhow::Result<()> {
        let at = self.pro.period + self.pro.grace + self.policy.late_cutoff + 600;
        self.move_clock_to(progress, played.start, played.start + at).await?;
        let gone = &self.people.iter().find(|p| p.role == Role::Lapses).expect("cast");
        self.wait_status(progress, "the keeper's retry after the grace period lapses it", played.ids[gone.index], "lapsed", 0).await
    }

    async fn settle_and_pay(&self, progress: &Progress) -> anyhow::Result<()> {
        let threshold = self.policy.payout_threshold.to_string();
        let threshold = &threshold;
        wait_for(progress, "every epoch is settled and every balance above the payout threshold is paid", self.policy.timeout, || async move {
            let (ungathered, unsettled, open, unpaid): (i64, i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM keeper.period_closes c WHERE NOT EXISTS
                           (SELECT 1 FROM keeper.epoch_closes e WHERE e.close_id = c.close_id)),
                        (SELECT COUNT(*) FROM keeper.epochs e WHERE NOT EXISTS
                           (SELECT 1 FROM chain.settlements s WHERE s.settlement_id = e.epoch_id)),
                        (SELECT COUNT(*) FROM keeper.outbox WHERE state IN ('planned', 'sent')),
                        (SELECT COUNT(*) FROM chain.recipient_balances WHERE claimable >= $1::NUMERIC)",
            )
            .bind(threshold)
            .fetch_one(&self.pool)
            .await?;
            Ok((ungathered + unsettled + open + unpaid > 0).then(|| {
                format!("{ungathered} closes not in an epoch, {unsettled} epochs to settle, {open} transactions in flight, {unpaid} payouts due")
            }))
        })
        .await
    }

    async fn after_the_month(&self, progress: &Progress, played: &mut Played) -> anyhow::Result<()> {
        let now = self.chain.now().await?;
        let gone = self.who(Role::Lapses).signer.address();
        wait_for(progress, "the keeper's entitlement view has the lapse", self.policy.timeout, || async move {
            let answer = self.api.entitlement(gone).await?;
            Ok((answer["entitled"] != false || answer["as_of"].as_u64() < Some(now)).then(|| answer.to_string()))
        })
        .await?;
        let who: Vec<Profile> = self
            .people
            .iter()
            .filter(|p| matches!(p.role, Role::Heavy | Role::Lapses | Role::Cancels))
            .cloned()
            .collect();
        let events = week_events(&who, 5, now - DAY, DAY - 120);
        let before = played.tally.clone();
        self.api.post(&events, &mut played.tally).await?;
        let refused = played.tally.payment_required - before.payment_required;
        ensure!(refused > 0, "the lapsed and the cancelled subscriber were served after their access ended");
        progress.done(&format!(
            "{} events accepted (the heavy user, into the new period), {refused} refused with 402 Payment Required",
            played.tally.accepted - before.accepted
        ));
        Ok(())
    }
}
