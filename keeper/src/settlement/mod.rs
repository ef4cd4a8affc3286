//! The settlement engine, the job of `subsettle-keeper run`: what the chain is to be told and when, written to an
//! outbox before it is signed.
//!
//! - [`engine`]: the `run` loop under a Postgres lease: reconcile, close, plan, send.
//! - [`renewals`]: which subscriptions to renew, when, in which batches.
//! - [`plan`]: usage charges, settlement epochs and pushed payouts to plan.
//! - [`threshold`]: mid-period charges when the overage crosses a configured threshold.
//! - [`epoch`]: settlement epochs gathered from the closes, one amount per split.
//! - [`outbox`]: on-chain actions written before they are signed, nonces from Postgres, receipts matched.
//! - [`token`]: the token's pause and blacklist: no pulls or payouts while paused, refusals explained.
//! - [`metrics`]: Prometheus metrics and `/healthz` of the engine.

pub mod engine;
pub mod epoch;
pub mod metrics;
pub mod outbox;
pub mod plan;
pub mod renewals;
pub mod threshold;
pub mod token;
