//! Metering, the job of `subsettle-keeper serve`: usage events in (over HTTP or from files) exactly once, whether a
//! subscriber is to be served, the price of what they used, period close and the statements that prove it.
//!
//! - [`event`], [`ingest`]: a usage event and its outcome; validation and exactly-once storage.
//! - [`catalog`], [`pricing`]: models, meters, the price book, and the price of a period's usage.
//! - [`subscriptions`], [`funds`], [`entitlement`]: what a subscriber has paid for, what their wallet can still
//!   pay, and the decision to serve them.
//! - [`close`]: period close, attribution to splits, usage roots.
//! - [`statement`]: statements for subscribers and creators with Merkle proofs, and their verification.
//! - [`api`]: the HTTP server that puts the above behind routes.

pub mod api;
pub mod catalog;
pub mod close;
pub mod entitlement;
pub mod event;
pub mod funds;
pub mod ingest;
pub mod pricing;
pub mod statement;
pub mod subscriptions;
