//! The marketplace's traffic: every request a subscriber makes becomes a usage event posted to the keeper's
//! `POST /v1/usage`, as an inference gateway would post it. Each weekly total is spread over several requests
//! inside the week; event ids are derived from who, when and what, so a resend is recognised as one.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cast::{Profile, weekly_usage};

/// Requests a weekly total is spread over.
const REQUESTS_PER_USE: u64 = 4;
/// Events per HTTP request.
const BATCH: usize = 500;

/// One usage event, with the index of the subscriber who caused it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Subscriber index in the cast.
    pub subscriber: usize,
    /// The JSON body of the event.
    pub body: Value,
}

/// The events of `week` (1-based), stamped between `week_start` and `week_start + week_secs` (chain time).
pub fn week_events(people: &[Profile], week: u32, week_start: u64, week_secs: u64) -> Vec<Event> {
    let mut events = Vec::new();
    for profile in people {
        for (model, meter, quantity) in weekly_usage(profile, week) {
            let share = quantity / REQUESTS_PER_USE;
            for request in 0..REQUESTS_PER_USE {
                // The last request takes the remainder so the week's total is exact.
                let amount = if request + 1 == REQUESTS_PER_USE { quantity - share * (REQUESTS_PER_USE - 1) } else { share };
                // Spread over the week, away from its edges, one second apart per subscriber.
                let at = week_start + week_secs * (request + 1) / (REQUESTS_PER_USE + 1) + profile.index as u64;
                events.push(Event {
                    subscriber: profile.index,
                    body: json!({
                        "event_id": format!("demo-s{}-w{week}-{model}-{meter}-{request}", profile.index),
                        "subscriber": profile.signer.address().to_string(),
                        "model": model,
                        "meter": meter,
                        "quantity": amount.to_string(),
                        "timestamp": at,
                    }),
                });
            }
        }
    }
    events
}

/// What the keeper answered, counted.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Stored.
    pub accepted: usize,
    /// Resends of stored events.
    pub duplicates: usize,
    /// Same id, different payload.
    pub conflicts: usize,
    /// Invalid.
    pub rejected: usize,
    /// Refused with 402: the subscriber is not entitled.
    pub payment_required: usize,
    /// 402s per subscriber index.
    pub refused_by_subscriber: BTreeMap<usize, usize>,
    /// Accepted events per subscriber index.
    pub accepted_by_subscriber: BTreeMap<usize, usize>,
}

/// The keeper's usage API.
#[derive(Debug, Clone)]
pub struct UsageApi {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl UsageApi {
    /// The API at `base_url` (e.g. `http://127.0.0.1:8080`), with the operator's token.
    pub fn new(base_url: &str, token: String) -> Self {
        Self { client: reqwest::Client::new(), url: base_url.trim_end_matches('/').to_owned(), token }
    }

    /// The keeper's answer to "may `wallet` be served now?", with the time it judged at (`as_of`).
    pub async fn entitlement(&self, wallet: alloy::primitives::Address) -> anyhow::Result<Value> {
        let response = self.client.get(format!("{}/v1/entitlement/{wallet}", self.url)).send().await.context("GET /v1/entitlement")?;
        let status = response.status();
        let answer: Value = response.json().await.context("GET /v1/entitlement: not JSON")?;
        if status != 200 {
            bail!("GET /v1/entitlement answered {status}: {answer}");
        }
        Ok(answer)
    }

    /// Posts `events` in batches and counts the outcomes. Invalid events and conflicts are a failure of the demo
    /// (its generator is wrong); 402s are expected for subscribers who are not entitled.
    pub async fn post(&self, events: &[Event], tally: &mut Tally) -> anyhow::Result<()> {
        for batch in events.chunks(BATCH) {
            let body: Vec<&Value> = batch.iter().map(|e| &e.body).collect();
            let response = self.client.post(format!("{}/v1/usage", self.url)).bearer_auth(&self.token).json(&body).send().await.context("POST /v1/usage")?;
            let status = response.status();
            let report: Value = response.json().await.with_context(|| format!("POST /v1/usage answered {status} without a JSON report"))?;
            if status != 200 && status != 402 {
                bail!("POST /v1/usage answered {status}: {report}");
            }
            let results = report["results"].as_array().context("the report has no results")?;
            for (event, result) in batch.iter().zip(results) {
                count(tally, event.subscriber, result)?;
            }
        }
        Ok(())
    }
}

fn count(tally: &mut Tally, subscriber: usize, result: &Value) -> anyhow::Result<()> {
    match result["status"].as_str() {
        Some("accepted") => {
            tally.accepted += 1;
            *tally.accepted_by_subscriber.entry(subscriber).or_default() += 1;
        }
        Some("duplicate") => tally.duplicates += 1,
        Some("payment_required") => {
            tally.payment_required += 1;
            *tally.refused_by_subscriber.entry(subscriber).or_default() += 1;
        }
        Some("conflict") => {
            tally.conflicts += 1;
            bail!("the keeper saw a conflicting resend: {result}");
        }
        _ => {
            tally.rejected += 1;
            bail!("the keeper rejected a demo event: {result}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cast::cast;

    #[test]
    fn a_week_of_events_adds_up_to_the_weekly_usage_and_stays_inside_the_week() {
        let people = cast(8);
        let events = week_events(&people, 1, 1_000_000, 604_800);
        for profile in &people {
            for (model, meter, quantity) in weekly_usage(profile, 1) {
                let posted: u64 = events
                    .iter()
                    .filter(|e| e.subscriber == profile.index && e.body["model"] == model && e.body["meter"] == meter)
                    .map(|e| e.body["quantity"].as_str().unwrap().parse::<u64>().unwrap())
                    .sum();
                assert_eq!(posted, quantity, "{model}/{meter} of subscriber {}", profile.index);
            }
        }
        assert!(events.iter().all(|e| (1_000_000..1_604_800).contains(&e.body["timestamp"].as_u64().unwrap())));
        let mut ids: Vec<&str> = events.iter().map(|e| e.body["event_id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), events.len(), "event ids are unique");
    }
}
