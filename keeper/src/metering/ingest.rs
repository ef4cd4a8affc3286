//! Usage events in: parsing and validating each event on its own (a bad event is rejected with the field at
//! fault, the others go on), checking the subscriber's entitlement, and storing each `event_id` exactly once.
//! A resend of the same event is a `duplicate`; the same `event_id` with a different payload is a `conflict`.

use std::{collections::HashMap, str::FromStr};

use alloy::primitives::{Address, B256, keccak256};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sqlx::PgPool;

use crate::{
    KeeperError,
    clock::{parse_rfc3339_ms, show_ms},
    metering::{
        catalog::Snapshot,
        entitlement::{Entitlements, Refusal},
        event::{BatchReport, Outcome, UsageEvent},
    },
};

/// Longest `event_id`.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Largest quantity of one event (in the meter's units).
pub const MAX_QUANTITY: Decimal = Decimal::from_parts(0xa4c6_8000, 0x0003_8d7e, 0, false, 0); // 1e15
/// Largest serialized `properties`.
pub const MAX_PROPERTIES_BYTES: usize = 4096;

/// Limits on what an event may say about time.
#[derive(Debug, Clone, Copy)]
pub struct TimePolicy {
    /// Now, Unix milliseconds.
    pub now_ms: i64,
    /// How far ahead of now a timestamp may be.
    pub max_future_ms: i64,
}

const FIELDS: [&str; 8] = ["event_id", "subscriber", "subscription_id", "model", "meter", "quantity", "timestamp", "properties"];

/// Validates one event (a parsed JSON value) against the catalog, the subscriptions and the time policy.
pub fn validate(raw: &Value, catalog: &Snapshot, entitlements: &Entitlements, time: TimePolicy) -> Result<UsageEvent, Outcome> {
    let Some(object) = raw.as_object() else {
        return Err(Outcome::rejected(None, "event", "an event must be a JSON object"));
    };
    let event_id = read_event_id(object)?;
    let id = Some(event_id.as_str());
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Outcome::rejected(id, unknown, "unknown field"));
    }
    let model = required_str(object, "model", id)?;
    let meter = required_str(object, "meter", id)?;
    let Some(scale) = catalog.meters.get(&(model.to_owned(), meter.to_owned())) else {
        return Err(if catalog.models.contains_key(model) {
            Outcome::rejected(id, "meter", format!("model `{model}` has no meter `{meter}`"))
        } else {
            Outcome::rejected(id, "model", format!("unknown model `{model}`"))
        });
    };
    let quantity = read_quantity(object.get("quantity"), *scale, id)?;
    let occurred_at_ms = read_timestamp(object.get("timestamp"), id)?;
    if occurred_at_ms > time.now_ms.saturating_add(time.max_future_ms) {
        return Err(Outcome::rejected(id, "timestamp", format!("{} is in the future", show_ms(occurred_at_ms))));
    }
    let subscriber = match object.get("subscriber") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            Address::from_str(text).map_err(|_| Outcome::rejected(id, "subscriber", format!("`{text}` is not a 0x address")))?,
        ),
        Some(_) => return Err(Outcome::rejected(id, "subscriber", "must be a 0x address string")),
    };
    let subscription_id = match object.get("subscription_id") {
        None | Some(Value::Null) => None,
        Some(value) => Some(read_u64(value).ok_or_else(|| Outcome::rejected(id, "subscription_id", "must be a non-negative integer"))?),
    };
    let (subscription, refused) = entitlements
        .resolve(subscriber, subscription_id, time.now_ms.div_euclid(1000))
        .map_err(|refusal| match refusal {
            Refusal::Invalid { field, reason } => Outcome::rejected(id, field, reason),
            Refusal::NotEntitled(reason) => Outcome::PaymentRequired { event_id: event_id.clone(), reason },
        })?;
    if occurred_at_ms < subscription.subscribed_at.saturating_mul(1000) {
        return Err(Outcome::rejected(id, "timestamp", format!("{} is before subscription {} started", show_ms(occurred_at_ms), subscription.id)));
    }
    let at = occurred_at_ms.div_euclid(1000);
    if catalog.catalog.price_at(model, meter, at).is_err() {
        return Err(Outcome::rejected(id, "timestamp", format!("no price for `{model}`/`{meter}` in force at {}", show_ms(occurred_at_ms))));
    }
    if catalog.catalog.split_at(model, at).is_err() {
        return Err(Outcome::rejected(id, "timestamp", format!("model `{model}` has no split in force at {}", show_ms(occurred_at_ms))));
    }
    let properties = read_properties(object.get("properties"), id)?;
    let mut event = UsageEvent {
        event_id,
        subscription_id: subscription.id,
        model: model.to_owned(),
        meter: meter.to_owned(),
        quantity,
        occurred_at_ms,
        properties,
        payload_hash: B256::ZERO,
        refused,
    };
    event.payload_hash = payload_hash(&event);
    Ok(event)
}

fn read_event_id(object: &Map<String, Value>) -> Result<String, Outcome> {
    match object.get("event_id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_EVENT_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(id.clone())
        }
        Some(Value::String(_)) => Err(Outcome::rejected(None, "event_id", format!("must be 1-{MAX_EVENT_ID_LEN} printable ASCII characters"))),
        Some(_) => Err(Outcome::rejected(None, "event_id", "must be a string")),
        None => Err(Outcome::rejected(None, "event_id", "missing")),
    }
}

fn required_str<'a>(object: &'a Map<String, Value>, field: &str, id: Option<&str>) -> Result<&'a str, Outcome> {
    match object.get(field) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(Outcome::rejected(id, field, "must be a string")),
        None => Err(Outcome::rejected(id, field, "missing")),
    }
}

fn read_quantity(value: Option<&Value>, scale: u32, id: Option<&str>) -> Result<Decimal, Outcome> {
    let text = match value {
        // Only whole JSON numbers: a fractional one has already been through a binary float.
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(Value::Number(n)) => {
            return Err(Outcome::rejected(id, "quantity", format!("{n}: write a fractional quantity as a decimal string, e.g. \"12.5\"")));
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Outcome::rejected(id, "quantity", "must be a number or a decimal string")),
        None => return Err(Outcome::rejected(id, "quantity", "missing")),
    };
    if text.contains(['e', 'E']) {
        return Err(Outcome::rejected(id, "quantity", format!("`{text}`: write the quantity without an exponent")));
    }
    let quantity = Decimal::from_str_exact(&text).map_err(|_| Outcome::rejected(id, "quantity", format!("`{text}` is not a decimal number")))?;
    if quantity.is_sign_negative() && !quantity.is_zero() {
        return Err(Outcome::rejected(id, "quantity", format!("{text} is negative")));
    }
    if quantity > MAX_QUANTITY {
        return Err(Outcome::rejected(id, "quantity", format!("{text} is above the limit of {MAX_QUANTITY} per event")));
    }
    let quantity = quantity.normalize();
    if quantity.scale() > scale {
        return Err(Outcome::rejected(id, "quantity", format!("{text} has more than {scale} decimal places for this meter")));
    }
    Ok(quantity)
}

/// Timestamps: RFC 3339 text (`2026-11-25T10:00:00.250Z`) or an integer of Unix seconds.
fn read_timestamp(value: Option<&Value>, id: Option<&str>) -> Result<i64, Outcome> {
    match value {
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|s| (0..=253_402_300_799).contains(s))
            .map(|s| s * 1000)
            .ok_or_else(|| Outcome::rejected(id, "timestamp", format!("{n} is not Unix seconds"))),
        Some(Value::String(text)) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text
            .parse::<i64>()
            .ok()
            .filter(|s| (0..=253_402_300_799).contains(s))
            .map(|s| s * 1000)
            .ok_or_else(|| Outcome::rejected(id, "timestamp", format!("{text} is not Unix seconds"))),
        Some(Value::String(text)) => parse_rfc3339_ms(text)
            .ok_or_else(|| Outcome::rejected(id, "timestamp", format!("`{text}` is not an RFC 3339 time like 2026-11-25T10:00:00Z"))),
        Some(_) => Err(Outcome::rejected(id, "timestamp", "must be RFC 3339 text or Unix seconds")),
        None => Err(Outcome::rejected(id, "timestamp", "missing")),
    }
}

fn read_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn read_properties(value: Option<&Value>, id: Option<&str>) -> Result<Option<Value>, Outcome> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(object @ Value::Object(_)) => {
            let size = serde_json::to_vec(object).map_or(usize::MAX, |v| v.len());
            if size > MAX_PROPERTIES_BYTES {
                return Err(Outcome::rejected(id, "properties", format!("{size} bytes, above the limit of {MAX_PROPERTIES_BYTES}")));
            }
            Ok(Some(object.clone()))
        }
        Some(_) => Err(Outcome::rejected(id, "properties", "must be a JSON object")),
    }
}

/// The hash that tells a resend from a conflict: over the normalized fields (keys of `properties` sorted).
fn payload_hash(event: &UsageEvent) -> B256 {
    let properties = event.properties.as_ref().map(|p| p.to_string()).unwrap_or_default();
    let text = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}",
        event.event_id, event.subscription_id, event.model, event.meter, event.quantity, event.occurred_at_ms, properties
    );
    keccak256(text.as_bytes())
}

/// Stores the valid events of a batch exactly once and reports every event's outcome in input order.
/// `prepared` holds, per input event, either the validated event or its rejection.
pub async fn store(pool: &PgPool, prepared: Vec<Result<UsageEvent, Outcome>>) -> Result<(BatchReport, Vec<UsageEvent>), KeeperError> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; prepared.len()];
    // The first occurrence of an id in the batch is the one stored; later ones compare against it.
    let mut first: HashMap<String, (usize, B256)> = HashMap::new();
    let mut candidates: Vec<(usize, UsageEvent)> = Vec::new();
    for (index, item) in prepared.into_iter().enumerate() {
        match item {
            Err(outcome) => outcomes[index] = Some(outcome),
            Ok(event) => match first.get(&event.event_id) {
                Some((_, hash)) => outcomes[index] = Some(compare(&event.event_id, *hash, event.payload_hash, "earlier in this batch")),
                None => {
                    first.insert(event.event_id.clone(), (index, event.payload_hash));
                    candidates.push((index, event));
                }
            },
        }
    }

    // Events of subscribers not to be served are not stored; a resend of one stored earlier is still a duplicate.
    let inserted = insert_new(pool, candidates.iter().map(|(_, e)| e).filter(|e| e.refused.is_none())).await?;
    let mut accepted = Vec::new();
    let mut existing_ids = Vec::new();
    for (index, event) in &candidates {
        if inserted.contains_key(event.event_id.as_str()) {
            outcomes[*index] = Some(Outcome::Accepted { event_id: event.event_id.clone() });
        } else {
            existing_ids.push(event.event_id.clone());
        }
    }
    if !existing_ids.is_empty() {
        let stored: HashMap<String, Vec<u8>> =
            sqlx::query_as::<_, (String, Vec<u8>)>("SELECT event_id, payload_hash FROM keeper.usage_events WHERE event_id = ANY($1)")
                .bind(&existing_ids)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect();
        for (index, event) in &candidates {
            if outcomes[*index].is_some() {
                continue;
            }
            outcomes[*index] = Some(match (stored.get(&event.event_id), &event.refused) {
                (Some(hash), _) => compare(&event.event_id, B256::from_slice(hash), event.payload_hash, "already stored"),
                (None, Some(reason)) => Outcome::PaymentRequired { event_id: event.event_id.clone(), reason: reason.clone() },
                // Only if a concurrent writer rolled back between the insert and this read: nothing is stored.
                (None, None) => Outcome::rejected(Some(&event.event_id), "event_id", "not stored because of a concurrent write; resend it"),
            });
        }
    }
    for (_, event) in candidates {
        if inserted.contains_key(event.event_id.as_str()) {
            accepted.push(event);
        }
    }
    let outcomes = outcomes.into_iter().map(|o| o.expect("every event has an outcome")).collect();
    Ok((BatchReport::from_outcomes(outcomes), accepted))
}

fn compare(event_id: &str, stored: B256, incoming: B256, place: &str) -> Outcome {
    if stored == incoming {
        Outcome::Duplicate { event_id: event_id.to_owned() }
    } else {
        Outcome::Conflict {
            event_id: event_id.to_owned(),
            reason: format!("event_id `{event_id}` is {place} with a different payload; the first one stands"),
        }
    }
}

/// Inserts the events whose ids are new, in one statement; returns the ids inserted.
async fn insert_new<'a>(pool: &PgPool, events: impl Iterator<Item = &'a UsageEvent>) -> Result<HashMap<String, ()>, KeeperError> {
    let mut ids = Vec::new();
    let mut hashes = Vec::new();
    let mut subscriptions = Vec::new();
    let mut models = Vec::new();
    let mut meters = Vec::new();
    let mut quantities = Vec::new();
    let mut times = Vec::new();
    let mut properties: Vec<Option<Value>> = Vec::new();
    for event in events {
        ids.push(event.event_id.as_str());
        hashes.push(event.payload_hash.as_slice().to_vec());
        subscriptions.push(event.subscription_id as i64);
        models.push(event.model.as_str());
        meters.push(event.meter.as_str());
        quantities.push(event.quantity);
        times.push(event.occurred_at_ms);
        properties.push(event.properties.clone());
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO keeper.usage_events (event_id, payload_hash, subscription_id, model_id, meter, quantity, occurred_at_ms, properties)
         SELECT * FROM UNNEST($1::TEXT[], $2::BYTEA[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::NUMERIC[], $7::BIGINT[], $8::JSONB[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(&ids)
    .bind(&hashes)
    .bind(&subscriptions)
    .bind(&models)
    .bind(&meters)
    .bind(&quantities)
    .bind(&times)
    .bind(&properties)
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().map(|id| (id, ())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_quantity_is_ten_to_the_fifteenth() {
        assert_eq!(MAX_QUANTITY, Decimal::from(1_000_000_000_000_000u64));
    }
}
