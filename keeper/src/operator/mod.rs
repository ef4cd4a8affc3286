//! Operator work: one-off commands an operator runs by hand, each validated and, where it changes the chain, sent
//! through the settlement engine's outbox.
//!
//! - [`deploy`]: deploys the contracts and writes the deployment descriptor the daemons read.
//! - [`admin`]: the owner's actions (plans, splits, holds, refunds, pause).
//! - [`import`]: usage events from files, through the same validation as the API.
//! - [`reconcile`]: the chain's views, the indexer's tables and the keeper's books compared, every difference listed.

pub mod admin;
pub mod deploy;
pub mod import;
pub mod reconcile;
