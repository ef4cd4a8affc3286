//! The one rounding rule of the keeper, used by every computation that turns decimals into token base units.
//!
//! 1. Prices, quantities and values stay exact decimals (`rust_decimal`) until a *line* is final.
//! 2. A line's value becomes base units once, by **truncation toward zero** (`floor`, values are never negative):
//!    a subscriber never pays for a fraction of a base unit.
//! 3. An integer amount divided over weighted lines uses the **largest-remainder** method: each line gets
//!    `floor(amount * weight / total)`; the units left over go one each to the lines with the largest remainders,
//!    ties to the lower line number. The parts always add up to the amount, to the unit, whatever the order the
//!    lines were built in.

use alloy::primitives::U512;
use rust_decimal::Decimal;

/// Why an amount could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// A value was negative where only non-negative values make sense.
    #[error("negative value {0}")]
    Negative(Decimal),
    /// A value does not fit the arithmetic.
    #[error("value {0} is too large")]
    Overflow(String),
}

/// `value` token units as base units (`10^decimals` per unit), truncated toward zero (rule 2).
pub fn to_base_units(value: Decimal, decimals: u32) -> Result<u128, MoneyError> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(MoneyError::Negative(value));
    }
    let (mantissa, scale) = decimal_parts(value);
    let base = 10u128.checked_pow(decimals).ok_or_else(|| MoneyError::Overflow(format!("10^{decimals}")))?;
    let scaled = mantissa.checked_mul(base).ok_or_else(|| MoneyError::Overflow(value.to_string()))?;
    Ok(scaled / 10u128.pow(scale))
}

/// Base units back to token units, exactly.
pub fn from_base_units(amount: u128, decimals: u32) -> Result<Decimal, MoneyError> {
    let mantissa = i128::try_from(amount).map_err(|_| MoneyError::Overflow(amount.to_string()))?;
    Decimal::try_from_i128_with_scale(mantissa, decimals).map_err(|_| MoneyError::Overflow(amount.to_string()))
}

/// Divides `amount` over `weights` by the largest-remainder method (rule 3). All weights zero: all parts zero and
/// `None` is returned, since there is nothing to divide by.
pub fn divide_by_weight(amount: u128, weights: &[Decimal]) -> Result<Option<Vec<u128>>, MoneyError> {
    if let Some(negative) = weights.iter().find(|w| w.is_sign_negative() && !w.is_zero()) {
        return Err(MoneyError::Negative(*negative));
    }
    // Bring every weight to one scale so that they are integers in the same unit.
    let scale = weights.iter().map(|w| w.scale()).max().unwrap_or(0);
    let integers: Vec<U512> = weights.iter().map(|w| scaled_integer(*w, scale)).collect();
    let total: U512 = integers.iter().fold(U512::ZERO, |sum, w| sum + *w);
    if total.is_zero() {
        return Ok(None);
    }
    let amount_wide = U512::from(amount);
    let mut parts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (index, weight) in integers.iter().enumerate() {
        let product = amount_wide * *weight;
        parts.push(u128::try_from(product / total).expect("a part is at most the amount"));
        remainders.push((product % total, index));
    }
    let handed_out: u128 = parts.iter().sum();
    let left = usize::try_from(amount - handed_out).expect("fewer units left than lines");
    // Largest remainder first; on a tie the lower index, so the result depends only on the lines themselves.
    remainders.sort_by(|(ra, ia), (rb, ib)| rb.cmp(ra).then(ia.cmp(ib)));
    for &(_, index) in remainders.iter().take(left) {
        parts[index] += 1;
    }
    Ok(Some(parts))
}

fn decimal_parts(value: Decimal) -> (u128, u32) {
    // A Decimal's mantissa is 96 bits: it always fits u128.
    (value.mantissa().unsigned_abs(), value.scale())
}

fn scaled_integer(value: Decimal, scale: u32) -> U512 {
    let (mantissa, own) = decimal_parts(value);
    U512::from(mantissa) * U512::from(10u8).pow(U512::from(scale - own))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    #[test]
    fn base_units_truncate() {
        assert_eq!(to_base_units(dec!(1.2345679), 6), Ok(1_234_567));
        assert_eq!(to_base_units(dec!(0.0000009), 6), Ok(0));
        assert_eq!(to_base_units(dec!(79), 6), Ok(79_000_000));
        assert_eq!(from_base_units(1_234_567, 6), Ok(dec!(1.234567)));
        assert!(matches!(to_base_units(dec!(-1), 6), Err(MoneyError::Negative(_))));
    }

    #[test]
    fn largest_remainder_hands_out_leftovers_by_remainder_then_index() {
        // 100 over thirds: 33.33 each, one unit left, to the first line (all remainders equal).
        let parts = divide_by_weight(100, &[dec!(1), dec!(1), dec!(1)]).unwrap().unwrap();
        assert_eq!(parts, vec![34, 33, 33]);
        // 10 over 0.5 / 0.3 / 0.2 at different scales: exact, nothing left.
        let parts = divide_by_weight(10, &[dec!(0.5), dec!(0.30), dec!(0.2)]).unwrap().unwrap();
        assert_eq!(parts, vec![5, 3, 2]);
        // 7 over 2:1 -> 4.67 / 2.33: the leftover goes to the larger remainder.
        assert_eq!(divide_by_weight(7, &[dec!(2), dec!(1)]).unwrap().unwrap(), vec![5, 2]);
        assert_eq!(divide_by_weight(7, &[dec!(0), dec!(0)]).unwrap(), None);
    }

    fn weight() -> impl Strategy<Value = Decimal> {
        (0u64..1_000_000_000_000, 0u32..12).prop_map(|(m, s)| Decimal::new(m as i64, s))
    }

    proptest! {
        #[test]
        fn parts_add_up_to_the_amount(amount in 0u128..u128::from(u64::MAX), weights in prop::collection::vec(weight(), 1..40)) {
            if let Some(parts) = divide_by_weight(amount, &weights).unwrap() {
                prop_assert_eq!(parts.iter().sum::<u128>(), amount);
                for (part, w) in parts.iter().zip(&weights) {
                    if w.is_zero() { prop_assert_eq!(*part, 0); }
                }
            } else {
                prop_assert!(weights.iter().all(|w| w.is_zero()));
            }
        }

        #[test]
        fn parts_do_not_depend_on_line_order(amount in 0u128..1_000_000_000_000u128, weights in prop::collection::vec(weight(), 1..20), rotate in 0usize..20) {
            let parts = divide_by_weight(amount, &weights).unwrap();
            let k = rotate % weights.len();
            let mut rotated = weights.clone();
            rotated.rotate_left(k);
            let rotated_parts = divide_by_weight(amount, &rotated).unwrap();
            if let (Some(p), Some(mut r)) = (parts, rotated_parts) {
                r.rotate_right(k);
                // Only ties may move between lines; each line's part is floor or floor + 1 either way.
                prop_assert_eq!(p.iter().sum::<u128>(), r.iter().sum::<u128>());
                for (a, b) in p.iter().zip(&r) { prop_assert!(a.abs_diff(*b) <= 1); }
            }
        }
    }
}
