//! Usage ingest over HTTP against a real chain and Postgres: every kind of bad input gets its precise error, and
//! nothing accepted is lost or counted twice (stored count and quantity compared before and after).

#[path = "../../indexer/tests/common/mod.rs"]
mod common;
#[path = "common/market.rs"]
mod market;

use alloy::providers::ext::AnvilApi;
use market::{Market, TOKEN};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use subsettle_abi::Subscriptions;

fn statuses(report: &Value) -> Vec<String> {
    report["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_owned()).collect()
}

fn field(report: &Value, index: usize) -> (&str, &str) {
    let r = &report["results"][index];
    (r["field"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn a_batch_is_stored_once_and_a_resend_changes_nothing() {
    let market = Market::start(2, 0).await;
    let now = market.now();
    let batch = json!([
        market.event("e-1", 0, "llm-large", "input_tokens", "1200", now),
        market.event("e-2", 0, "image-gen", "images", "3", now),
        market.event("e-3", 1, "gpu-box", "gpu_seconds", "12.5", now),
    ]);
    let (status, report) = market.usage(&batch).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(statuses(&report), ["accepted", "accepted", "accepted"]);
    let after_first = market.stored().await;
    assert_eq!(after_first, (3, Decimal::new(12155, 1)));

    let (status, report) = market.usage(&batch).await;
    assert_eq!(status, 200);
    assert_eq!(statuses(&report), ["duplicate", "duplicate", "duplicate"]);
    assert_eq!(market.stored().await, after_first);

    // The same events as NDJSON, with the subscription id instead of the wallet: still the same payloads.
    let ndjson: String = batch
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            let owner = if i == 2 { 1 } else { 0 };
            e.as_object_mut().unwrap().remove("subscriber");
            e["subscription_id"] = json!(market.subscribers[owner].1);
            format!("{e}\n")
        })
        .collect();
    let (status, report) = market.post("/v1/usage", ndjson, "application/x-ndjson", Some(TOKEN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(statuses(&report), ["duplicate", "duplicate", "duplicate"]);
    assert_eq!(market.stored().await, after_first);
}

#[tokio::test]
async fn a_reused_event_id_with_another_payload_is_a_conflict_and_the_first_stands() {
    let market = Market::start(1, 0).await;
    let now = market.now();
    let (_, report) = market.usage(&json!([market.event("c-1", 0, "image-gen", "images", "2", now)])).await;
    assert_eq!(statuses(&report), ["accepted"]);
    let (status, report) = market
        .usage(&json!([
            market.event("c-1", 0, "image-gen", "images", "5", now),
            market.event("c-2", 0, "image-gen", "images", "1", now),
            market.event("c-2", 0, "image-gen", "images", "9", now),
        ]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(statuses(&report), ["conflict", "accepted", "conflict"]);
    assert!(report["results"][0]["reason"].as_str().unwrap().contains("already stored with a different payload"));
    assert!(report["results"][2]["reason"].as_str().unwrap().contains("earlier in this batch"));
    assert_eq!(market.stored().await, (2, Decimal::from(3)));
}

#[tokio::test]
async fn each_bad_event_is_rejected_with_its_field_and_the_good_ones_are_kept() {
    let market = Market::start(2, 0).await;
    let now = market.now();
    let mut unknown_field = market.event("b-9", 0, "image-gen", "images", "1", now);
    unknown_field["colour"] = json!("blue");
    let mut before_start = market.event("b-10", 0, "image-gen", "images", "1", now);
    before_start["timestamp"] = json!(now - 400 * 86_400);
    let mut no_subscriber = market.event("b-11", 0, "image-gen", "images", "1", now);
    no_subscriber.as_object_mut().unwrap().remove("subscriber");
    let mut wrong_owner = market.event("b-12", 0, "image-gen", "images", "1", now);
    wrong_owner["subscription_id"] = json!(market.subscribers[1].1);
    let batch = json!([
        market.event("ok-1", 0, "image-gen", "images", "1", now),
        market.event("b-1", 0, "no-such-model", "images", "1", now),
        market.event("b-2", 0, "image-gen", "pixels", "1", now),
        market.event("b-3", 0, "image-gen", "images", "-4", now),
        market.event("b-4", 0, "image-gen", "images", "10000000000000000", now),
        market.event("b-5", 0, "image-gen", "images", "1.5", now),
        market.event("b-6", 0, "image-gen", "images", "1", now + 3_600),
        market.event("b-7", 0, "image-gen", "images", "lots", now),
        { "subscriber": market.subscribers[0].0.to_string(), "model": "image-gen" },
        unknown_field,
        before_start,
        no_subscriber,
        wrong_owner,
        { "event_id": "b-13", "subscriber": "0x1234", "model": "image-gen", "meter": "images", "quantity": 1, "timestamp": now },
        { "event_id": "b-14", "subscriber": market.subscribers[0].0.to_string(), "model": "image-gen", "meter": "images", "quantity": 1, "timestamp": "yesterday" },
        "not an object",
        { "event_id": "b-15", "subscriber": market.subscribers[1].0.to_string(), "model": "gpu-box", "meter": "gpu_seconds", "quantity": 0.1, "timestamp": now },
        market.event("ok-2", 1, "gpu-box", "gpu_seconds", "0.125", now),
    ]);
    let before = market.stored().await;
    let (status, report) = market.usage(&batch).await;
    assert_eq!(status, 200, "{report}");
    let expected = [
        ("", ""),
        ("model", "unknown model `no-such-model`"),
        ("meter", "model `image-gen` has no meter `pixels`"),
        ("quantity", "-4 is negative"),
        ("quantity", "above the limit"),
        ("quantity", "more than 0 decimal places"),
        ("timestamp", "in the future"),
        ("quantity", "`lots` is not a decimal number"),
        ("event_id", "missing"),
        ("colour", "unknown field"),
        ("timestamp", "before subscription"),
        ("subscriber", "give `subscriber` or `subscription_id`"),
        ("subscriber", "does not own subscription"),
        ("subscriber", "`0x1234` is not a 0x address"),
        ("timestamp", "`yesterday` is not an RFC 3339 time"),
        ("event", "must be a JSON object"),
        ("quantity", "as a decimal string"),
        ("", ""),
    ];
    for (i, (want_field, want_reason)) in expected.iter().enumerate() {
        if want_field.is_empty() {
            assert_eq!(report["results"][i]["status"], "accepted", "event {i}: {}", report["results"][i]);
            continue;
        }
        let (field, reason) = field(&report, i);
        assert_eq!(report["results"][i]["status"], "rejected", "event {i}: {}", report["results"][i]);
        assert_eq!(field, *want_field, "event {i}: {}", report["results"][i]);
        assert!(reason.contains(want_reason), "event {i}: `{reason}` lacks `{want_reason}`");
    }
    assert_eq!(report["accepted"], 2);
    assert_eq!(report["rejected"], 16);
    assert_eq!(market.stored().await, (before.0 + 2, before.1 + Decimal::new(1125, 3)));
}

#[tokio::test]
async fn malformed_bodies_wrong_tokens_and_oversized_bodies_store_nothing() {
    let market = Market::start(1, 0).await;
    let now = market.now();
    let good = json!([market.event("m-1", 0, "image-gen", "images", "1", now)]).to_string();
    let before = market.stored().await;

    let (status, body) = market.post("/v1/usage", "[{\"event_id\": ", "application/json", Some(TOKEN)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("malformed_json")));
    let (status, body) = market.post("/v1/usage", good.clone(), "application/json", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = market.post("/v1/usage", good.clone(), "application/json", Some("not-the-token-at-all")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = market.post("/v1/usage", good.clone(), "text/plain", Some(TOKEN)).await;
    assert_eq!((status, body["code"].as_str()), (415, Some("unsupported_media_type")));
    let (status, body) = market.post("/v1/usage", "[]", "application/json", Some(TOKEN)).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("empty_batch")));
    let huge = format!("[{}]", vec![good.trim_matches(['[', ']']); 20_000].join(","));
    let (status, body) = market.post("/v1/usage", huge, "application/json", Some(TOKEN)).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("body_too_large")), "{body}");
    assert_eq!(market.stored().await, before);

    // NDJSON: a broken line is rejected by its line number, the others are stored.
    let ndjson = format!("{}\n{{broken\n", json!(market.event("m-2", 0, "image-gen", "images", "1", now)));
    let (status, report) = market.post("/v1/usage", ndjson, "application/x-ndjson", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(statuses(&report), ["accepted", "rejected"]);
    assert_eq!(report["results"][1]["field"], "line 2");
    assert_eq!(market.stored().await.0, before.0 + 1);
}

#[tokio::test]
async fn events_of_a_subscriber_who_is_not_entitled_get_402_and_are_not_stored() {
    let market = Market::start(2, 0).await;
    let now = market.now();
    // Subscriber 1 cancels and its paid time runs out; subscriber 0 keeps paying.
    let provider = market.chain.provider(2);
    confirm!(Subscriptions::new(market.deployment.subscriptions, &provider).cancel(alloy::primitives::U256::from(market.subscribers[1].1)));
    market.advance(31 * 86_400).await;
    let now2 = market.now();
    let stranger = alloy::primitives::Address::repeat_byte(0x42);
    let before = market.stored().await;
    let (status, report) = market
        .usage(&json!([
            market.event("p-1", 0, "image-gen", "images", "1", now2),
            market.event("p-2", 1, "image-gen", "images", "1", now2),
            { "event_id": "p-3", "subscriber": stranger.to_string(), "model": "image-gen", "meter": "images", "quantity": 1, "timestamp": now2 },
        ]))
        .await;
    assert_eq!(status, 402, "{report}");
    assert_eq!(statuses(&report), ["accepted", "payment_required", "payment_required"]);
    assert!(report["results"][1]["reason"].as_str().unwrap().contains("cancelled"));
    assert!(report["results"][2]["reason"].as_str().unwrap().contains("has no subscription"));
    assert_eq!(market.stored().await.0, before.0 + 1);

    let (status, answer) = market.get(&format!("/v1/entitlement/{}", market.subscribers[1].0)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["entitled"], false);
    let (_, answer) = market.get(&format!("/v1/entitlement/{}", market.subscribers[0].0)).await;
    assert_eq!(answer["entitled"], true, "{answer}");
    assert_eq!(answer["status"], "active");
    let (status, answer) = market.get("/v1/entitlement/not-an-address").await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("invalid")));
    let _ = now;
    let _ = market.operator().anvil_mine(Some(1), None).await;
}

#[tokio::test]
async fn overage_beyond_the_cap_stops_entitlement() {
    // A cap of 1 USDC: the allowance (2M input tokens and 20 USDC of value) then 1 USDC of overage.
    let market = Market::start(1, 1_000_000).await;
    let now = market.now();
    let who = market.subscribers[0].0;
    // 500 images at 0.04 = 20 USDC: exactly the value allowance, no overage yet.
    let (_, report) = market.usage(&json!([market.event("o-1", 0, "image-gen", "images", "500", now)])).await;
    assert_eq!(statuses(&report), ["accepted"]);
    let (_, answer) = market.get(&format!("/v1/entitlement/{who}")).await;
    assert_eq!((answer["entitled"].clone(), answer["overage_used"].clone()), (json!(true), json!("0")), "{answer}");
    // 25 more images = 1 USDC of overage: the cap is used up.
    let (_, report) = market.usage(&json!([market.event("o-2", 0, "image-gen", "images", "25", now)])).await;
    assert_eq!(statuses(&report), ["accepted"]);
    let (_, answer) = market.get(&format!("/v1/entitlement/{who}")).await;
    assert_eq!(answer["entitled"], false, "{answer}");
    assert_eq!(answer["overage_used"], "1000000");
    let (status, report) = market.usage(&json!([market.event("o-3", 0, "image-gen", "images", "1", now)])).await;
    assert_eq!(status, 402);
    assert!(report["results"][0]["reason"].as_str().unwrap().contains("overage cap"));
    // A resend of an event stored before the cap ran out is still just a duplicate.
    let (status, report) = market.usage(&json!([market.event("o-2", 0, "image-gen", "images", "25", now)])).await;
    assert_eq!((status, statuses(&report)), (200, vec!["duplicate".to_owned()]));
}

#[tokio::test]
async fn models_and_prices_over_http_and_no_version_reaches_back_over_accepted_usage() {
    let market = Market::start(1, 0).await;
    let now = market.now();
    let (status, report) = market.usage(&json!([market.event("v-1", 0, "image-gen", "images", "4", now)])).await;
    assert_eq!((status, report["accepted"].as_u64()), (200, Some(1)));

    // A model registered over HTTP, with its meter; a split that is not on chain is refused, naming it.
    let model = json!({ "model_id": "tts-1", "display_name": "TTS", "split_id": market.splits[2], "meters": [{ "meter": "characters" }] });
    let (status, body) = market.post("/v1/models", model.to_string(), "application/json", Some(TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = market.post("/v1/models", model.to_string(), "application/json", Some(TOKEN)).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid")));
    assert!(body["message"].as_str().unwrap().contains("already registered"));
    let unknown = json!({ "model_id": "tts-2", "display_name": "TTS", "split_id": 999, "meters": [{ "meter": "characters" }] });
    let (status, body) = market.post("/v1/models", unknown.to_string(), "application/json", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = market.post("/v1/models", unknown.to_string(), "application/json", Some(TOKEN)).await;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap().starts_with("split_id: split 999 is not on chain"), "{body}");
    let (_, models) = market.get("/v1/models").await;
    assert_eq!(models.as_array().unwrap().len(), 4);
    // A meter added later is billable at once (with a price), and a duplicate is refused.
    let meter = json!({ "meter": "seconds_of_audio", "scale": 1 }).to_string();
    let (status, _) = market.post("/v1/models/tts-1/meters", meter.clone(), "application/json", Some(TOKEN)).await;
    assert_eq!(status, 201);
    let (status, body) = market.post("/v1/models/tts-1/meters", meter, "application/json", Some(TOKEN)).await;
    assert_eq!((status, body["message"].as_str().map(|m| m.contains("already exists"))), (422, Some(true)), "{body}");
    let audio_price = json!({ "model_id": "tts-1", "meter": "seconds_of_audio", "unit_price": "0.001", "effective_at": 0 }).to_string();
    assert_eq!(market.post("/v1/prices", audio_price, "application/json", Some(TOKEN)).await.0, 201);
    let (_, report) = market.usage(&json!([market.event("v-2", 0, "tts-1", "seconds_of_audio", "12.5", now)])).await;
    assert_eq!(report["accepted"], 1, "{report}");

    // Prices are decimal strings; a new version may start after the latest accepted usage, not before.
    let price = |at: i64| json!({ "model_id": "image-gen", "meter": "images", "unit_price": "0.05", "effective_at": at }).to_string();
    let (status, body) = market.post("/v1/prices", price(now - 60), "application/json", Some(TOKEN)).await;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap().contains("not after the latest accepted usage"), "{body}");
    let (status, body) = market.post("/v1/prices", price(now + 60), "application/json", Some(TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    // A model's split mapping changes with the escrow's notice (its split-change delay, 7 days here) from when
    // it is recorded; a keeper that does not know the delay takes no change.
    let split = |at: i64| json!({ "split_id": market.splits[2], "effective_at": at }).to_string();
    let (status, body) = market.post("/v1/models/image-gen/splits", split(now + 8 * 86_400), "application/json", Some(TOKEN)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("split-change delay"), "{body}");
    market.keeper.split_notice.set(7 * 86_400).unwrap();
    for early in [now - 1, now + 60, now + 7 * 86_400 - 1] {
        let (status, body) = market.post("/v1/models/image-gen/splits", split(early), "application/json", Some(TOKEN)).await;
        assert_eq!(status, 422, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("effective_at: {early} is too early")), "{message}");
        assert!(message.contains(&format!("the earliest allowed now is {}", now + 7 * 86_400)), "the error names the earliest time: {message}");
    }
    let (status, body) = market.post("/v1/models/image-gen/splits", split(now + 7 * 86_400), "application/json", Some(TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    let (_, models) = market.get("/v1/models").await;
    let image = models.as_array().unwrap().iter().find(|m| m["model_id"] == "image-gen").unwrap().clone();
    assert_eq!(image["splits"].as_array().unwrap().len(), 2, "the split history is kept: {image}");

    // The history is public, with when each mapping was recorded and the notice it gave; a model's first mapping
    // (given at registration, before it earned anything) gives none.
    let (status, history) = market.get("/v1/models/image-gen/splits").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["notice_secs"], 7 * 86_400);
    let splits = history["splits"].as_array().unwrap();
    assert_eq!((splits[0]["split_id"].as_u64(), splits[0]["effective_at"].as_i64()), (Some(market.splits[1]), Some(0)));
    assert_eq!((splits[0]["notice_secs"].as_u64(), splits[0]["state"].as_str()), (Some(0), Some("in_force")));
    assert_eq!((splits[1]["split_id"].as_u64(), splits[1]["effective_at"].as_i64()), (Some(market.splits[2]), Some(now + 7 * 86_400)));
    assert_eq!((splits[1]["recorded_at"].as_i64(), splits[1]["notice_secs"].as_u64()), (Some(now), Some(7 * 86_400)));
    assert_eq!(splits[1]["state"], "scheduled");
    let (status, history) = market.get("/v1/models/tts-1/splits").await;
    assert_eq!((status, history["splits"].as_array().map(Vec::len)), (200, Some(1)), "{history}");
    let (status, body) = market.get("/v1/models/no-such-model/splits").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    // Once in force, the new mapping earns for usage stamped from then on.
    market.advance(7 * 86_400 + 1).await;
    let (_, history) = market.get("/v1/models/image-gen/splits").await;
    assert_eq!((history["splits"][0]["state"].as_str(), history["splits"][1]["state"].as_str()), (Some("past"), Some("in_force")), "{history}");
}
