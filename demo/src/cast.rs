//! The people in the demo. The first six subscribers each show one thing that can happen to a subscription; the
//! rest are ordinary customers with usage that varies by subscriber. Everything is derived from the subscriber's
//! index, so two runs of the demo play the same month.

use alloy::{primitives::keccak256, signers::local::PrivateKeySigner};

use crate::USDC;

/// What a subscriber does during the month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Uses more than the plan includes in the first week; the overage is charged up to their cap.
    Heavy,
    /// Uses a little, well inside the plan.
    Light,
    /// Has too little in the wallet at renewal: past due, tops up inside the grace period, renewed.
    RunsOut,
    /// Cancels in the second week: keeps access to the end of the paid period, is charged for what was used.
    Cancels,
    /// Runs out of funds and never tops up: lapses after the grace period, then gets 402 Payment Required.
    Lapses,
    /// Pay as you go: no fee, every unit is charged, up to the cap.
    PayAsYouGo,
    /// An ordinary customer.
    Regular,
}

impl Role {
    /// The role of subscriber `index`.
    pub fn of(index: usize) -> Self {
        match index {
            0 => Self::Heavy,
            1 => Self::Light,
            2 => Self::RunsOut,
            3 => Self::Cancels,
            4 => Self::Lapses,
            5 => Self::PayAsYouGo,
            _ => Self::Regular,
        }
    }

    /// A word for the tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Heavy => "heavy",
            Self::Light => "light",
            Self::RunsOut => "runs out, tops up",
            Self::Cancels => "cancels",
            Self::Lapses => "runs out, lapses",
            Self::PayAsYouGo => "pay as you go",
            Self::Regular => "regular",
        }
    }
}

/// Which plan a subscriber takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// The monthly plan with included usage.
    Pro,
    /// Price 0: all usage is billed.
    PayAsYouGo,
}

/// One subscriber of the demo.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Position in the cast.
    pub index: usize,
    /// What they do.
    pub role: Role,
    /// Their wallet key (derived from the index; a local chain only).
    pub signer: PrivateKeySigner,
    /// The plan.
    pub plan: PlanKind,
    /// Overage cap per period, base units.
    pub cap: u64,
    /// USDC minted to the wallet before subscribing, base units.
    pub funding: u64,
    /// Approves with an EIP-2612 permit signature instead of an `approve` transaction.
    pub permit: bool,
}

/// The cast of `n` subscribers (at least six, one per role).
pub fn cast(n: usize) -> Vec<Profile> {
    (0..n.max(6)).map(profile).collect()
}

fn profile(index: usize) -> Profile {
    let role = Role::of(index);
    let plan = match role {
        Role::PayAsYouGo => PlanKind::PayAsYouGo,
        Role::Regular if index.is_multiple_of(3) => PlanKind::PayAsYouGo,
        _ => PlanKind::Pro,
    };
    let (cap, funding) = match (role, plan) {
        (Role::Heavy, _) => (25, 300),
        // The first period (79) leaves 6 USDC: the renewal a month later fails.
        (Role::RunsOut, _) => (10, 85),
        (Role::Lapses, _) => (10, 80),
        (Role::PayAsYouGo, _) => (40, 100),
        (Role::Regular, PlanKind::PayAsYouGo) => (30, 100),
        (Role::Regular, PlanKind::Pro) => (20, 250),
        _ => (10, 200),
    };
    let seed = keccak256(format!("subsettle-demo subscriber {index}"));
    Profile {
        index,
        role,
        signer: PrivateKeySigner::from_bytes(&seed).expect("a 32-byte hash is a valid key but with negligible odds"),
        plan,
        cap: cap * USDC,
        funding: funding * USDC,
        permit: index % 2 == 1,
    }
}

/// Usage of one kind in a week: model, meter, quantity.
pub type Use = (&'static str, &'static str, u64);

/// What `profile` uses in `week` (1 to 4 are the month; 5 is the first week of the next period).
pub fn weekly_usage(profile: &Profile, week: u32) -> Vec<Use> {
    let i = profile.index as u64;
    match profile.role {
        // 4M input + 1M output tokens of llm-large are 27 USDC: past the 20 USDC the plan includes in week one.
        Role::Heavy if week == 1 => vec![("llm-large", "input_tokens", 4_000_000), ("llm-large", "output_tokens", 1_000_000)],
        Role::Heavy => vec![("llm-large", "input_tokens", 2_000_000), ("llm-large", "output_tokens", 400_000), ("image-gen", "images", 100)],
        Role::Light => vec![("llm-small", "input_tokens", 200_000), ("llm-small", "output_tokens", 50_000)],
        Role::RunsOut => vec![("image-gen", "images", 60)],
        Role::Lapses => vec![("image-gen", "images", 40), ("llm-small", "input_tokens", 500_000)],
        // 15 USDC in week one, 8 more in week two: 3 over the allowance; then they cancel.
        Role::Cancels if week == 1 => vec![("image-gen", "images", 300), ("llm-large", "input_tokens", 1_000_000)],
        Role::Cancels if week == 2 => vec![("image-gen", "images", 200)],
        // Gone after cancelling; tries again once in the week after the month and is refused.
        Role::Cancels if week <= 4 => vec![],
        Role::Cancels => vec![("image-gen", "images", 10)],
        Role::PayAsYouGo => vec![("llm-large", "input_tokens", 2_000_000), ("llm-large", "output_tokens", 500_000)],
        Role::Regular => vec![
            ("image-gen", "images", 20 + (i * 37 + u64::from(week) * 11) % 120),
            ("llm-small", "input_tokens", 100_000 * (1 + (i + u64::from(week)) % 7)),
            ("llm-large", "output_tokens", 50_000 * (i % 4)),
        ],
    }
    .into_iter()
    .filter(|(_, _, quantity)| *quantity > 0)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_in_the_smallest_cast_and_keys_differ() {
        let people = cast(6);
        let roles: Vec<Role> = people.iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::Heavy, Role::Light, Role::RunsOut, Role::Cancels, Role::Lapses, Role::PayAsYouGo]);
        assert_ne!(people[0].signer.address(), people[1].signer.address());
        assert!(people.iter().any(|p| p.permit) && people.iter().any(|p| !p.permit), "both ways of approving");
    }

    #[test]
    fn the_heavy_user_exceeds_the_allowance_in_week_one() {
        // Priced as scripts/demo prices llm-large: 3 and 15 USDC per million tokens.
        let heavy = &cast(6)[0];
        let value: u64 = weekly_usage(heavy, 1).iter().map(|(_, meter, q)| if *meter == "input_tokens" { q * 3 } else { q * 15 }).sum();
        assert!(value / 1_000_000 > 20, "{value}");
    }
}
