//! The demo's marketplace, driven against the real daemons: `scripts/demo` deploys the contracts, creates plans,
//! splits and models with the operator commands, starts the indexer and the keeper, and then runs
//! `subsettle-demo`, which plays a compressed month of an AI model marketplace and prints what happened.
//!
//! - [`cast`]: who subscribes, to what, with which cap and funds, and how much they use each week.
//! - [`wallets`]: subscriber wallets funded from the token, subscribing with `approve` or a permit signature.
//! - [`traffic`]: usage events posted to the keeper's HTTP API, with the outcome of each.
//! - [`month`]: the month itself, phase by phase, waiting for the daemons at each step.
//! - [`timeline`]: the local chain's clock moved forward, and waiting for the daemons to act on it.
//! - [`summary`]: the tables per recipient and per subscriber, and statements written to files.

pub mod cast;
pub mod month;
pub mod summary;
pub mod timeline;
pub mod traffic;
pub mod wallets;

/// Token base units per USDC.
pub const USDC: u64 = 1_000_000;

/// `amount` base units as USDC with six decimals, by the keeper's conversion.
pub fn usdc(amount: u128) -> String {
    subsettle_keeper::money::from_base_units(amount, 6).map_or_else(|_| format!("{amount} base units"), |value| value.to_string())
}

/// The first and last four hex digits of an address, for tables.
pub fn short(address: &alloy::primitives::Address) -> String {
    let text = address.to_string();
    format!("{}…{}", &text[..6], &text[text.len() - 4..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn amounts_print_with_all_six_decimals() {
        assert_eq!(super::usdc(25_000_000), "25.000000");
        assert_eq!(super::usdc(1), "0.000001");
        assert_eq!(super::usdc(0), "0.000000");
    }
}
