//! Property tests of pricing and attribution (pure): what is attributed adds up to what is collected, to the
//! unit; the overage charge never exceeds the cap; the result does not depend on the order events arrived in or
//! how they were batched.

use proptest::prelude::*;
use rust_decimal::Decimal;
use subsettle_keeper::{
    money,
    metering::pricing::{Allowance, Catalog, MeteredEvent, PeriodTerms, Price, price_period},
};

const METERS: [(&str, &str); 4] = [("llm", "input_tokens"), ("llm", "output_tokens"), ("img", "images"), ("gpu", "gpu_seconds")];

fn catalog(prices: &[(u64, u32)], change_at: i64, split_change_at: i64) -> Catalog {
    let mut catalog = Catalog::default();
    for (i, (model, meter)) in METERS.iter().enumerate() {
        let (mantissa, scale) = prices[i];
        let price = |p: Decimal, at| Price { effective_at: at, unit_price: p, per_units: Decimal::from(if i < 2 { 1_000_000 } else { 1 }) };
        let timeline = catalog.prices.entry(((*model).into(), (*meter).into())).or_default();
        timeline.insert(0, price(Decimal::new(mantissa as i64, scale), 0));
        // A price change in the middle of the period: a new version, used only for events after it.
        timeline.insert(change_at, price(Decimal::new(mantissa as i64 * 2 + 1, scale), change_at));
    }
    for (i, model) in ["llm", "img", "gpu"].iter().enumerate() {
        let splits = catalog.splits.entry((*model).into()).or_default();
        splits.insert(0, i as u64 + 1);
        splits.insert(split_change_at, i as u64 + 10);
    }
    catalog
}

fn events() -> impl Strategy<Value = Vec<MeteredEvent>> {
    prop::collection::vec((0usize..4, 0u64..5_000_000, 0i64..2_592_000_000, any::<bool>()), 0..60).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(n, (meter, quantity, at_ms, late))| {
                let (model, meter_name) = METERS[meter];
                // gpu seconds carry 3 decimals; the rest are whole units.
                let quantity = if meter == 3 { Decimal::new(quantity as i64, 3) } else { Decimal::from(quantity) };
                MeteredEvent {
                    event_id: format!("e-{n:04}"),
                    model: model.into(),
                    meter: meter_name.into(),
                    quantity,
                    occurred_at_ms: at_ms,
                    adjustment_of: late.then_some(0),
                }
            })
            .collect()
    })
}

fn terms() -> impl Strategy<Value = PeriodTerms> {
    (0u64..200_000_000, 0u64..50_000_000, 0u64..3_000_000, 0u64..40, any::<bool>()).prop_map(|(fee, cap, units, value, default)| PeriodTerms {
        fee: fee.into(),
        overage_cap: cap.into(),
        allowance: Allowance { units: [("input_tokens".to_owned(), Decimal::from(units))].into(), value: Decimal::from(value) },
        default_split: default.then_some(99),
        decimals: 6,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn attribution_adds_up_and_the_cap_holds(
        prices in prop::collection::vec((1u64..50_000, 0u32..6), 4),
        change_at in 1i64..2_592_000,
        split_change_at in 1i64..2_592_000,
        terms in terms(),
        events in events(),
    ) {
        let catalog = catalog(&prices, change_at, split_change_at);
        match price_period(&catalog, &terms, &events) {
            Ok(priced) => {
                prop_assert_eq!(priced.lines.iter().map(|l| l.attributed).sum::<u128>(), priced.collected);
                prop_assert_eq!(priced.collected, terms.fee + priced.overage_charge);
                prop_assert!(priced.overage_charge <= terms.overage_cap);
                prop_assert_eq!(priced.overage_charge, priced.overage_amount.min(terms.overage_cap));
                prop_assert!(priced.included_value <= priced.metered_value);
                prop_assert_eq!(priced.lines.iter().map(|l| l.event_count as usize).sum::<usize>(), events.len());
                for line in &priced.lines {
                    prop_assert_eq!(line.overage_amount, money::to_base_units(line.value - line.included_value, 6).unwrap());
                    prop_assert!(line.included_quantity <= line.quantity);
                    if line.key.model.is_empty() {
                        prop_assert_eq!(Some(line.key.split_id), terms.default_split);
                    }
                }
            }
            // The only refusal: nothing of value was metered and no default split takes the fee.
            Err(e) => {
                prop_assert!(terms.default_split.is_none(), "{}", e);
                prop_assert!(events.iter().all(|e| e.quantity.is_zero()) || events.is_empty());
            }
        }
    }

    #[test]
    fn order_and_batching_do_not_matter(
        prices in prop::collection::vec((1u64..50_000, 0u32..6), 4),
        change_at in 1i64..2_592_000,
        terms in terms(),
        events in events(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(0usize..60, 0..5),
    ) {
        let catalog = catalog(&prices, change_at, change_at);
        let expected = price_period(&catalog, &terms, &events);
        // Arrival order: a seeded shuffle, then batches (cut points) arriving in reverse order.
        let mut shuffled = events.clone();
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(shuffled.len())).collect();
        bounds.push(0);
        bounds.push(shuffled.len());
        bounds.sort_unstable();
        bounds.dedup();
        let mut arrived = Vec::new();
        for window in bounds.windows(2).rev() {
            arrived.extend_from_slice(&shuffled[window[0]..window[1]]);
        }
        prop_assert_eq!(price_period(&catalog, &terms, &arrived), expected);
    }
}

#[test]
fn included_usage_is_taken_in_event_order_and_priced_at_each_events_time() {
    let mut catalog = Catalog::default();
    let tokens = catalog.prices.entry(("llm".into(), "input_tokens".into())).or_default();
    tokens.insert(0, Price { effective_at: 0, unit_price: Decimal::from(3), per_units: Decimal::from(1_000_000) });
    tokens.insert(100, Price { effective_at: 100, unit_price: Decimal::from(6), per_units: Decimal::from(1_000_000) });
    catalog.splits.entry("llm".into()).or_default().insert(0, 7);
    let event = |id: &str, quantity: u64, at: i64| MeteredEvent {
        event_id: id.into(),
        model: "llm".into(),
        meter: "input_tokens".into(),
        quantity: Decimal::from(quantity),
        occurred_at_ms: at * 1000,
        adjustment_of: None,
    };
    let terms = PeriodTerms {
        fee: 79_000_000,
        overage_cap: 5_000_000,
        allowance: Allowance { units: [("input_tokens".to_owned(), Decimal::from(1_000_000))].into(), value: Decimal::ONE },
        default_split: None,
        decimals: 6,
    };
    // 1.5M tokens at $3/M before the change (1M included), then 1M at $6/M after it.
    let priced = price_period(&catalog, &terms, &[event("b", 1_000_000, 150), event("a", 1_500_000, 50)]).unwrap();
    assert_eq!(priced.lines.len(), 2);
    let (before, after) = (&priced.lines[0], &priced.lines[1]);
    assert_eq!(before.included_quantity, Decimal::from(1_000_000));
    // Before: 0.5M over = $1.50, of which $1 is the value allowance: $0.50 overage. After: $6 overage.
    assert_eq!(before.overage_amount, 500_000);
    assert_eq!(after.overage_amount, 6_000_000);
    assert_eq!(priced.overage_amount, 6_500_000);
    assert_eq!(priced.overage_charge, 5_000_000, "capped");
    assert_eq!(priced.collected, 84_000_000);
    // Divided by metered value ($4.50 : $6.00).
    assert_eq!(before.attributed + after.attributed, 84_000_000);
    assert_eq!(before.attributed, 36_000_000);
}
