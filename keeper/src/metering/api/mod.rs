//! The keeper's HTTP API: usage ingest, entitlement, models and prices. Writes need the operator's bearer token;
//! every error is JSON `{"code": ..., "message": ...}`. The OpenAPI description is `docs/keeper-openapi.yaml`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use alloy::primitives::Address;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{
    KeeperError,
    metering::catalog::{self, NewAllowance, NewModel, NewPrice, Snapshot, SplitNotice},
    clock::Clock,
    metering::entitlement::{self, Entitlements, RefusalKind},
    metering::funds::{self, FundsPolicy, FundsReader},
    metering::ingest::{self, TimePolicy}, metering::event::{BatchReport, Outcome, UsageEvent},
    metering::statement,
    metering::subscriptions,
};

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// What the API needs to know.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The deployment's chain.
    pub chain_id: u64,
    /// The operator's bearer token for writes (`None`: writes over HTTP are refused).
    pub api_token: Option<String>,
    /// Token decimals.
    pub decimals: u32,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How far ahead of now an event's timestamp may be, milliseconds.
    pub max_future_ms: i64,
}

/// The state shared by the handlers and the refresh loop.
#[derive(Debug)]
pub struct Keeper {
    /// Postgres.
    pub pool: PgPool,
    /// Settings.
    pub settings: ApiSettings,
    /// The catalog, swapped whole on reload.
    pub catalog: RwLock<Arc<Snapshot>>,
    /// Subscriptions and open usage.
    pub entitlements: RwLock<Entitlements>,
    /// Time.
    pub clock: Clock,
    /// The escrow's split-change delay (seconds), read from the chain by `serve`: the notice a change of a model's
    /// split mapping must give. Unset: such changes are refused.
    pub split_notice: OnceLock<u64>,
    /// Counters for `/metrics`.
    pub metrics: ServeMetrics,
}

/// What `serve` counts in memory for `/metrics` (per process).
#[derive(Debug, Default)]
pub struct ServeMetrics {
    /// Events refused with 402, per [`RefusalKind::ALL`] entry.
    payment_required: [AtomicU64; RefusalKind::ALL.len()],
    /// Wall clock (Unix ms) of the last refresh that read every live wallet's funds; 0: none yet.
    last_funds_refresh_ms: AtomicI64,
}

impl ServeMetrics {
    fn refused(&self, kind: RefusalKind) {
        if let Some(i) = RefusalKind::ALL.iter().position(|k| *k == kind) {
            self.payment_required[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events refused with 402 for `kind` so far.
    pub fn payment_required(&self, kind: RefusalKind) -> u64 {
        RefusalKind::ALL.iter().position(|k| *k == kind).map_or(0, |i| self.payment_required[i].load(Ordering::Relaxed))
    }
}

impl Keeper {
    /// Loads the catalog and the subscriptions.
    pub async fn load(pool: PgPool, settings: ApiSettings, clock: Clock) -> Result<Arc<Self>, KeeperError> {
        let keeper = Arc::new(Self {
            pool,
            settings,
            catalog: RwLock::new(Arc::new(Snapshot::default())),
            entitlements: RwLock::new(Entitlements::default()),
            clock,
            split_notice: OnceLock::new(),
            metrics: ServeMetrics::default(),
        });
        keeper.refresh().await?;
        Ok(keeper)
    }

    /// Judges billable usage against the wallets' funds from now on (read with [`Self::refresh_funds`]).
    pub fn enable_funds(&self, policy: FundsPolicy) {
        self.entitlements.write().expect("entitlement lock").enable_funds(policy);
    }

    /// Reads the funds of the wallets with a live subscription (with `unread_only`, only of those never read, e.g.
    /// new subscribers) and what the chain has charged in their open periods; returns how many wallets it read.
    /// The readings go to `keeper.wallet_funds`, and the view takes the newest stored reading of each wallet,
    /// which may be another replica's. A failed read still takes the stored readings, then returns the error.
    pub async fn refresh_funds(&self, reader: &FundsReader, unread_only: bool) -> Result<usize, KeeperError> {
        let chain_id = self.settings.chain_id;
        let (wallets, periods) = self.entitlements.read().expect("entitlement lock").live(self.clock.now_secs(), unread_only);
        if wallets.is_empty() {
            if !unread_only {
                self.metrics.last_funds_refresh_ms.store(funds::wall_ms(), Ordering::SeqCst);
            }
            return Ok(0);
        }
        // The index first, the chain second: a charge the index already shows is then in the balance read too,
        // so the money it took is never counted as still in the wallet. (A charge in the balance read but not
        // indexed yet only overstates what is owed, until the next refresh.)
        let charged = funds::load_charged(&self.pool, chain_id, &periods).await?;
        let read = reader.read(&wallets).await;
        if let Ok(readings) = &read {
            funds::save(&self.pool, chain_id, readings).await?;
        }
        let stored = funds::load(&self.pool, chain_id, &wallets).await?;
        self.entitlements.write().expect("entitlement lock").set_funds(stored, &periods, &charged);
        let count = read?.len();
        if !unread_only {
            self.metrics.last_funds_refresh_ms.store(funds::wall_ms(), Ordering::SeqCst);
        }
        Ok(count)
    }

    /// Reloads the catalog and the subscriptions from Postgres.
    pub async fn refresh(&self) -> Result<(), KeeperError> {
        let snapshot = Arc::new(catalog::load(&self.pool).await?);
        *self.catalog.write().expect("catalog lock") = snapshot.clone();
        // Read without holding the lock; ingest goes on against the previous view meanwhile.
        let now = self.clock.now_secs();
        let subscriptions = subscriptions::load_all(&self.pool, self.settings.chain_id).await?;
        let reload = Reload::begin(&self.entitlements);
        let stale = self.entitlements.read().expect("entitlement lock").stale(&subscriptions, now);
        let usage = entitlement::load_open_usage(&self.pool, &stale).await?;
        self.entitlements.write().expect("entitlement lock").apply(subscriptions, &stale, usage, reload.mark, &snapshot, self.settings.decimals);
        Ok(())
    }

    /// Reads the open usage of every live subscription again from Postgres, so that usage stored by other
    /// processes (another `serve` replica, `usage import`) counts against caps and funds here too.
    pub async fn reload_open_usage(&self) -> Result<(), KeeperError> {
        let snapshot = self.snapshot();
        let reload = Reload::begin(&self.entitlements);
        let targets = self.entitlements.read().expect("entitlement lock").reload_targets(self.clock.now_secs());
        let usage = entitlement::load_open_usage(&self.pool, &targets).await?;
        self.entitlements.write().expect("entitlement lock").apply_reload(&targets, usage, reload.mark, &snapshot, self.settings.decimals);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Validates and stores a batch of parsed events (or per-event parse failures).
    pub async fn ingest(&self, items: Vec<Result<Value, Outcome>>) -> Result<BatchReport, KeeperError> {
        let snapshot = self.snapshot();
        let time = TimePolicy { now_ms: self.clock.now_ms(), max_future_ms: self.settings.max_future_ms };
        let now = time.now_ms.div_euclid(1000);
        let (mut prepared, mut kinds, judge_funds) = {
            let entitlements = self.entitlements.read().expect("entitlement lock");
            let prepared: Vec<Result<UsageEvent, Outcome>> =
                items.into_iter().map(|item| item.and_then(|raw| ingest::validate(&raw, &snapshot, &entitlements, time))).collect();
            let kinds: Vec<Option<RefusalKind>> = prepared
                .iter()
                .map(|item| match item {
                    Ok(event) if event.refused.is_some() => Some(entitlements.refusal_kind(event.subscription_id, now)),
                    Err(Outcome::PaymentRequired { .. }) => Some(RefusalKind::NotEntitled),
                    _ => None,
                })
                .collect();
            (prepared, kinds, entitlements.funds_policy().is_some())
        };
        // Funds are judged and reserved under one write lock, so that concurrent batches of a wallet do not both
        // spend the same headroom; the reservation ends once the events are recorded (or the request is dropped).
        let mut reservation = Reservation { lock: &self.entitlements, reserved: Vec::new() };
        if judge_funds {
            let mut entitlements = self.entitlements.write().expect("entitlement lock");
            reservation.reserved = entitlements.admit(&mut prepared, &mut kinds, &snapshot, self.settings.decimals, now);
        }
        let (report, accepted) = ingest::store(&self.pool, prepared).await?;
        {
            let mut entitlements = self.entitlements.write().expect("entitlement lock");
            entitlements.record(&accepted, &snapshot, self.settings.decimals);
            entitlements.release(&reservation.take());
        }
        for (outcome, kind) in report.results.iter().zip(&kinds) {
            if matches!(outcome, Outcome::PaymentRequired { .. }) {
                self.metrics.refused(kind.unwrap_or(RefusalKind::NotEntitled));
            }
        }
        Ok(report)
    }

    /// The model-to-split notice in force now, if known.
    fn split_notice_now(&self) -> Result<SplitNotice, KeeperError> {
        let delay_secs = *self.split_notice.get().ok_or_else(|| KeeperError::Invalid {
            field: "effective_at".into(),
            reason: "this keeper does not know the escrow's split-change delay (serve reads it from the chain at start), so it takes no split mapping changes".into(),
        })?;
        Ok(SplitNotice { now: self.clock.now_secs(), delay_secs })
    }

    /// The text exposition of `/metrics`.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP subsettle_keeper_payment_required_total Usage events refused with 402 by this process, by reason.\n\
             # TYPE subsettle_keeper_payment_required_total counter\n",
        );
        for kind in RefusalKind::ALL {
            out.push_str(&format!("subsettle_keeper_payment_required_total{{reason=\"{}\"}} {}\n", kind.label(), self.metrics.payment_required(kind)));
        }
        let entitlements = self.entitlements.read().expect("entitlement lock");
        if entitlements.funds_policy().is_some() {
            let age = match self.metrics.last_funds_refresh_ms.load(Ordering::SeqCst) {
                0 => -1,
                at => funds::wall_ms().saturating_sub(at) / 1000,
            };
            let unknown = entitlements.wallets_with_unknown_funds(self.clock.now_secs());
            out.push_str(&format!(
                "# HELP subsettle_keeper_funds_refresh_age_seconds Seconds since this process last read the funds of every wallet with a live subscription (-1: never).\n\
                 # TYPE subsettle_keeper_funds_refresh_age_seconds gauge\n\
                 subsettle_keeper_funds_refresh_age_seconds {age}\n\
                 # HELP subsettle_keeper_funds_unknown_wallets Wallets with a live subscription whose funds are unknown (billable usage refused).\n\
                 # TYPE subsettle_keeper_funds_unknown_wallets gauge\n\
                 subsettle_keeper_funds_unknown_wallets {unknown}\n"
            ));
        }
        out
    }
}

/// A reload of open usage in flight: events recorded meanwhile are kept to be added on top of it; ended when
/// dropped (also when the reload fails or its request is dropped).
struct Reload<'a> {
    lock: &'a RwLock<Entitlements>,
    mark: usize,
}

impl<'a> Reload<'a> {
    fn begin(lock: &'a RwLock<Entitlements>) -> Self {
        let mark = lock.write().expect("entitlement lock").begin_reload();
        Self { lock, mark }
    }
}

impl Drop for Reload<'_> {
    fn drop(&mut self) {
        if let Ok(mut entitlements) = self.lock.write() {
            entitlements.end_reload();
        }
    }
}

/// Overage reserved for a batch in flight; released when dropped if not taken (the request failed or its
/// connection closed before the events were recorded).
struct Reservation<'a> {
    lock: &'a RwLock<Entitlements>,
    reserved: Vec<(u64, u128)>,
}

impl Reservation<'_> {
    fn take(mut self) -> Vec<(u64, u128)> {
        std::mem::take(&mut self.reserved)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.reserved.is_empty()
            && let Ok(mut entitlements) = self.lock.write()
        {
            entitlements.release(&self.reserved);
        }
    }
}

/// The router.
pub fn router(keeper: Arc<Keeper>) -> Router {
    let limit = keeper.settings.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(get_metrics))
        .route("/v1/usage", post(post_usage))
        .route("/v1/entitlement/{subscriber}", get(get_entitlement))
        .route("/v1/models", get(list_models).post(add_model))
        .route("/v1/models/{model_id}/splits", get(get_splits).post(set_split))
        .route("/v1/models/{model_id}/meters", post(add_meter))
        .route("/v1/prices", post(set_price))
        .route("/v1/allowances", post(set_allowance))
        .route("/v1/statements/{party}/{address}", get(get_statement))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(keeper)
}

/// Serves until `shutdown` turns true.
pub async fn serve(keeper: Arc<Keeper>, addr: SocketAddr, mut shutdown: watch::Receiver<bool>) -> Result<(), KeeperError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| KeeperError::Invalid { field: "http_addr".into(), reason: format!("{addr}: {e}") })?;
    tracing::info!(%addr, "keeper API listening");
    axum::serve(listener, router(keeper))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|e| KeeperError::Invalid { field: "http".into(), reason: e.to_string() })
}

/// A JSON error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

impl From<KeeperError> for ApiError {
    fn from(error: KeeperError) -> Self {
        match error {
            KeeperError::Invalid { field, reason } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("{field}: {reason}")),
            other => {
                tracing::error!(error = %other, "request failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the keeper could not complete the request; retry")
            }
        }
    }
}

fn authorize(keeper: &Keeper, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = keeper.settings.api_token.as_deref() else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this keeper takes no writes over HTTP"));
    };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send the operator token as `Authorization: Bearer <token>`")),
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong operator token")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits a body into events: a JSON array, or NDJSON (one object per line) when the content type says so.
pub fn parse_batch(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Result<Value, Outcome>>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let items: Vec<Result<Value, Outcome>> = if content_type.starts_with("application/x-ndjson") || content_type.starts_with("application/ndjson") {
        body.split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(n, line)| {
                serde_json::from_slice(line).map_err(|e| Outcome::Rejected {
                    event_id: None,
                    field: format!("line {}", n + 1),
                    reason: format!("malformed JSON: {e}"),
                })
            })
            .collect()
    } else if content_type.starts_with("application/json") {
        let values: Vec<Value> = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not a JSON array of events: {e}")))?;
        values.into_iter().map(Ok).collect()
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("`{content_type}`: send application/json (an array) or application/x-ndjson"),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty_batch", "the batch has no events"));
    }
    if items.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} events; at most {MAX_BATCH_EVENTS} per batch", items.len()),
        ));
    }
    Ok(items)
}

/// A request body, or the JSON error for one over the size limit (or cut short).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn body_bytes(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body is over the limit of {limit} bytes"))
        } else {
            ApiError::new(rejection.status(), "bad_body", rejection.body_text())
        }
    })
}

async fn post_usage(State(keeper): State<Arc<Keeper>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&keeper, &headers)?;
    let body = body_bytes(body, keeper.settings.max_body_bytes)?;
    let items = parse_batch(&headers, &body)?;
    let report = keeper.ingest(items).await?;
    // 402 when events were refused for entitlement: those were not stored; the rest of the batch was processed.
    let status = if report.payment_required > 0 { StatusCode::PAYMENT_REQUIRED } else { StatusCode::OK };
    Ok((status, Json(report)).into_response())
}

async fn get_entitlement(State(keeper): State<Arc<Keeper>>, Path(subscriber): Path<String>) -> Result<Response, ApiError> {
    let address: Address = subscriber
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("subscriber: `{subscriber}` is not a 0x address")))?;
    let now = keeper.clock.now_secs();
    let answer = keeper.entitlements.read().expect("entitlement lock").check(address, now);
    Ok(Json(EntitlementAnswer { answer, as_of: now }).into_response())
}

/// An entitlement with the keeper's time it was judged at, so a caller can tell a stale answer.
#[derive(serde::Serialize)]
struct EntitlementAnswer {
    #[serde(flatten)]
    answer: crate::metering::entitlement::Entitlement,
    /// Unix seconds.
    as_of: i64,
}

async fn list_models(State(keeper): State<Arc<Keeper>>) -> Response {
    let snapshot = keeper.snapshot();
    Json(snapshot.models.values().cloned().collect::<Vec<_>>()).into_response()
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
}

async fn add_model(State(keeper): State<Arc<Keeper>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&keeper, &headers)?;
    let body = body_bytes(body, keeper.settings.max_body_bytes)?;
    let model: NewModel = parse_json(&body)?;
    catalog::add_model(&keeper.pool, keeper.settings.chain_id, &model).await?;
    keeper.refresh().await?;
    Ok((StatusCode::CREATED, Json(json!({ "model_id": model.model_id }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitChange {
    split_id: u64,
    effective_at: i64,
}

async fn set_split(State(keeper): State<Arc<Keeper>>, Path(model_id): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&keeper, &headers)?;
    let body = body_bytes(body, keeper.settings.max_body_bytes)?;
    let change: SplitChange = parse_json(&body)?;
    let notice = keeper.split_notice_now()?;
    catalog::set_model_split(&keeper.pool, keeper.settings.chain_id, &model_id, change.split_id, change.effective_at, notice).await?;
    keeper.refresh().await?;
    Ok(StatusCode::CREATED.into_response())
}

/// A model's split mapping history, public like the model list: creators can see which split a model earns for
/// and from when, and that every change gave the escrow's notice.
async fn get_splits(State(keeper): State<Arc<Keeper>>, Path(model_id): Path<String>) -> Result<Response, ApiError> {
    let Some(history) = catalog::split_history(&keeper.pool, &model_id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("unknown model `{model_id}`")));
    };
    let now = keeper.clock.now_secs();
    let in_force = history.iter().rposition(|m| m.effective_at <= now);
    let splits: Vec<Value> = history
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let state = if m.effective_at > now { "scheduled" } else if Some(i) == in_force { "in_force" } else { "past" };
            json!({
                "split_id": m.split_id,
                "effective_at": m.effective_at,
                "recorded_at": m.recorded_at,
                "notice_secs": m.notice_secs,
                "state": state,
            })
        })
        .collect();
    Ok(Json(json!({ "model_id": model_id, "notice_secs": keeper.split_notice.get(), "as_of": now, "splits": splits })).into_response())
}

async fn get_metrics(State(keeper): State<Arc<Keeper>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], keeper.render_metrics()).into_response()
}

async fn add_meter(State(keeper): State<Arc<Keeper>>, Path(model_id): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&keeper, &headers)?;
    let body = body_bytes(body, keeper.settings.max_body_bytes)?;
    let meter: catalog::NewMeter = parse_json(&body)?;
    catalog::add_meter(&keeper.pool, &model_id, &meter).await?;
    keeper.refresh().await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn set_price(State(keeper): State<Arc<Keeper>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&keeper, &headers)?;
    let body = body_bytes(body, keeper.settings.max_body_bytes)?;
    let price: NewPrice = parse_json(&body)?;
    catalog::set_price(&keeper.pool, &price).await?;
    keeper.refresh().await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn set_allowance(State(keeper): State<Arc<Keeper>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&keeper, &headers)?;
    let body = body_bytes(body, keeper.settings.max_body_bytes)?;
    let allowance: NewAllowance = parse_json(&body)?;
    catalog::set_allowance(&keeper.pool, keeper.settings.chain_id, &allowance).await?;
    keeper.refresh().await?;
    Ok(StatusCode::CREATED.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementQuery {
    epoch: Option<u64>,
    from: Option<i64>,
    to: Option<i64>,
}

async fn get_statement(
    State(keeper): State<Arc<Keeper>>,
    Path((party, address)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<StatementQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    // Statements show a wallet's usage: the operator fetches them (and hands them to the party), not anyone.
    authorize(&keeper, &headers)?;
    if party != "creator" && party != "subscriber" {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("`{party}`: use creator or subscriber")));
    }
    let axum::extract::Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()))?;
    let address: Address = address
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("address: `{address}` is not a 0x address")))?;
    let scope = statement::Scope { epoch: query.epoch, from: query.from, to: query.to };
    let (pool, chain_id, decimals) = (&keeper.pool, keeper.settings.chain_id, keeper.settings.decimals);
    let statement = match party.as_str() {
        "creator" => statement::creator_statement(pool, chain_id, decimals, address, scope).await?,
        "subscriber" => statement::subscriber_statement(pool, chain_id, decimals, address, scope).await?,
        other => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("`{other}`: use creator or subscriber"))),
    };
    Ok(Json(statement).into_response())
}
