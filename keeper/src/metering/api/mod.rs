//! The keeper's HTTP API: usage ingest, entitlement, models and prices. Writes need the operator's bearer token;
//! every error is JSON `{"code": ..., "message": ...}`. The OpenAPI description is `docs/keeper-openapi.yaml`.
//!
//! - [`auth`]: the token, checked before a body is read.
//! - [`body`]: media types, bodies read under a deadline and a memory budget, batches split into events.
//! - [`limits`]: the timeouts, the connection limit and the body memory budget.
//! - [`server`]: the HTTP/1.1 server that enforces them, and graceful shutdown.
//! - [`metrics`]: answers and latencies per route for `/metrics`.

use std::{
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use alloy::primitives::Address;
use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;

pub mod auth;
pub mod body;
pub mod limits;
pub mod metrics;
pub mod server;

pub use limits::{HttpGuard, HttpLimits};
pub use server::{raise_open_files_limit, serve};

use auth::Operator;
use body::Payload;
use metrics::{DbFailure, HttpMetrics};

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
    /// The deployment's chain, set by `serve`: a subscriber statement reads the chain's clock at the indexer's cursor
    /// from it, to say whether a charge the chain collected less of is still collectable. Unset: such a shortfall is
    /// judged only once the subscription is two periods on.
    pub chain: OnceLock<(alloy::providers::DynProvider, subsettle_abi::Deployment)>,
    /// Where the indexer stood when the held subscriptions were read: [`Self::refresh`] reads them again only
    /// once it has moved.
    chain_mark: Mutex<Option<subscriptions::ChainMark>>,
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
    /// Ingested events per outcome, in [`OUTCOMES`] order.
    events: [AtomicU64; OUTCOMES.len()],
    /// Answers and latencies per route.
    pub http: HttpMetrics,
}

/// The outcomes of an ingested event, as labelled in `/metrics`.
const OUTCOMES: [&str; 5] = ["accepted", "duplicate", "conflict", "rejected", "payment_required"];

impl ServeMetrics {
    fn refused(&self, kind: RefusalKind) {
        if let Some(i) = RefusalKind::ALL.iter().position(|k| *k == kind) {
            self.payment_required[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ingested(&self, report: &BatchReport) {
        let counts = [report.accepted, report.duplicates, report.conflicts, report.rejected, report.payment_required];
        for (counter, count) in self.events.iter().zip(counts) {
            counter.fetch_add(count as u64, Ordering::Relaxed);
        }
    }

    /// Ingested events with `outcome` (as in a batch report: `accepted`, `duplicate`, ...) so far.
    pub fn events(&self, outcome: &str) -> u64 {
        OUTCOMES.iter().position(|o| *o == outcome).map_or(0, |i| self.events[i].load(Ordering::Relaxed))
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
            chain: OnceLock::new(),
            chain_mark: Mutex::new(None),
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

    /// Reloads the catalog, the subscriptions (only when the indexer has moved since they were read) and the
    /// usage of the periods that have started since, from Postgres.
    pub async fn refresh(&self) -> Result<(), KeeperError> {
        let snapshot = Arc::new(catalog::load(&self.pool).await?);
        *self.catalog.write().expect("catalog lock") = snapshot.clone();
        // Read without holding the lock; ingest goes on against the previous view meanwhile. The mark is read
        // before the subscriptions, so a move of the indexer during the read is seen at the next refresh.
        let now = self.clock.now_secs();
        let mark = subscriptions::chain_mark(&self.pool, self.settings.chain_id).await?;
        let moved = self.chain_mark.lock().expect("chain mark lock").as_ref() != Some(&mark);
        let subscriptions = match moved {
            true => Some(subscriptions::load_all(&self.pool, self.settings.chain_id).await?),
            false => None,
        };
        let stale = self.entitlements.read().expect("entitlement lock").stale(subscriptions.as_ref(), now);
        let usage = entitlement::load_open_usage(&self.pool, &stale).await?;
        let replaced = self.entitlements.write().expect("entitlement lock").apply(subscriptions, &stale, usage, &snapshot, self.settings.decimals);
        drop(replaced);
        if moved {
            *self.chain_mark.lock().expect("chain mark lock") = Some(mark);
        }
        Ok(())
    }

    /// Reads the open usage of every live subscription again from Postgres, so that usage stored by other
    /// processes (another `serve` replica, `usage import`) counts against caps and funds here too.
    pub async fn reload_open_usage(&self) -> Result<(), KeeperError> {
        let snapshot = self.snapshot();
        let targets = self.entitlements.read().expect("entitlement lock").reload_targets(self.clock.now_secs());
        let usage = entitlement::load_open_usage(&self.pool, &targets).await?;
        self.entitlements.write().expect("entitlement lock").apply_reload(&targets, usage, &snapshot, self.settings.decimals);
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
        // The view filters first; caps and funds are judged for good in the transaction that stores the events, on
        // the usage every batch and replica admitted (`entitlement::ledger`), which brings the view up to date.
        if judge_funds {
            self.entitlements.read().expect("entitlement lock").admit(&mut prepared, &mut kinds, &snapshot, self.settings.decimals, now);
        }
        let admission = entitlement::Admission { view: &self.entitlements, catalog: &snapshot, decimals: self.settings.decimals, now, kinds: &mut kinds };
        let report = ingest::store(&self.pool, prepared, admission).await?;
        for (outcome, kind) in report.results.iter().zip(&kinds) {
            if matches!(outcome, Outcome::PaymentRequired { .. }) {
                self.metrics.refused(kind.unwrap_or(RefusalKind::NotEntitled));
            }
        }
        self.metrics.ingested(&report);
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

    /// The text exposition of `/metrics` (without the HTTP server's own figures).
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP subsettle_keeper_ingested_events_total Usage events ingested by this process, by outcome.\n\
             # TYPE subsettle_keeper_ingested_events_total counter\n",
        );
        for outcome in OUTCOMES {
            out.push_str(&format!("subsettle_keeper_ingested_events_total{{outcome=\"{outcome}\"}} {}\n", self.metrics.events(outcome)));
        }
        let options = self.pool.options();
        out.push_str(&format!(
            "# HELP subsettle_keeper_db_pool_connections Postgres connections of this process's pool, by state.\n\
             # TYPE subsettle_keeper_db_pool_connections gauge\n\
             subsettle_keeper_db_pool_connections{{state=\"open\"}} {}\nsubsettle_keeper_db_pool_connections{{state=\"idle\"}} {}\n\
             # HELP subsettle_keeper_db_pool_max_connections Most connections the pool opens.\n\
             # TYPE subsettle_keeper_db_pool_max_connections gauge\nsubsettle_keeper_db_pool_max_connections {}\n\
             # HELP subsettle_keeper_db_acquire_timeout_seconds How long a request waits for a connection before answering 503.\n\
             # TYPE subsettle_keeper_db_acquire_timeout_seconds gauge\nsubsettle_keeper_db_acquire_timeout_seconds {}\n",
            self.pool.size(),
            self.pool.num_idle(),
            options.get_max_connections(),
            options.get_acquire_timeout().as_secs_f64(),
        ));
        out.push_str(
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

/// The router with the default [`HttpLimits`] (for serving it in-process, e.g. in tests; `serve` uses
/// [`router_with`] under its own limits).
pub fn router(keeper: Arc<Keeper>) -> Router {
    let guard = HttpGuard::new(HttpLimits::default(), keeper.settings.max_body_bytes);
    router_with(keeper, guard)
}

/// The router under `guard`'s body memory budget, body deadline and request deadline.
pub fn router_with(keeper: Arc<Keeper>, guard: Arc<HttpGuard>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(get_ready))
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
        .layer(middleware::from_fn(limits::deadline))
        .layer(middleware::from_fn_with_state(keeper.clone(), metrics::observe))
        .layer(Extension(guard))
        .with_state(keeper)
}

/// A JSON error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Set when the database is why: counted in `/metrics`.
    db: Option<DbFailure>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), db: None }
    }

    fn unavailable(db: DbFailure) -> Self {
        Self { db: Some(db), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the keeper could not complete the request; retry") }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "code": self.code, "message": self.message }))).into_response();
        if let Some(db) = self.db {
            response.extensions_mut().insert(db);
        }
        response
    }
}

impl From<KeeperError> for ApiError {
    fn from(error: KeeperError) -> Self {
        match error {
            KeeperError::Invalid { field, reason } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("{field}: {reason}")),
            KeeperError::Database(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("no database connection within the acquire timeout; answering 503");
                Self::unavailable(DbFailure::AcquireTimeout)
            }
            // A value Postgres refuses (a data exception, class 22) or a check, not-null or foreign-key constraint it
            // violates is refused again on every retry: the request is at fault, not the keeper (validation should
            // have caught it). A unique violation may be a race that a retry resolves: 503 like any other failure.
            KeeperError::Database(sqlx::Error::Database(db))
                if db.code().is_some_and(|code| code.starts_with("22") || ["23502", "23503", "23514"].contains(&code.as_ref())) =>
            {
                tracing::warn!(error = %db, "the database refused a value that passed validation");
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("the database refused a value: {}", db.message()))
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::unavailable(DbFailure::Error)
            }
        }
    }
}

/// A model id from a path: of the catalog's form, so that it can be looked up (a NUL or other text Postgres
/// refuses never reaches it). One that is not is an unknown model: 404 for a read, 422 `model_id` for a write
/// (as a well-formed unknown id is).
fn path_model_id(model_id: &str, write: bool) -> Result<(), ApiError> {
    if catalog::check_model_id(model_id).is_ok() {
        return Ok(());
    }
    let message = format!("unknown model {model_id:?}");
    Err(if write {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("model_id: {message}"))
    } else {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    })
}

async fn post_usage(_: Operator, State(keeper): State<Arc<Keeper>>, body: Payload) -> Result<Response, ApiError> {
    let items = body.events()?;
    let report = keeper.ingest(items).await?;
    // 402 when events were refused for entitlement: those were not stored; the rest of the batch was processed.
    let status = if report.payment_required > 0 { StatusCode::PAYMENT_REQUIRED } else { StatusCode::OK };
    Ok((status, Json(report)).into_response())
}

/// Readiness: 200 while Postgres answers within the pool's acquire timeout, else 503 with the reason (a load
/// balancer takes this replica out of rotation meanwhile). `/healthz` is liveness only.
async fn get_ready(State(keeper): State<Arc<Keeper>>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let limit = keeper.pool.options().get_acquire_timeout();
    let answered = tokio::time::timeout(limit, sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&keeper.pool)).await;
    let reason = match answered {
        Ok(Ok(_)) => return Ok(Json(json!({ "status": "ready", "database_ms": started.elapsed().as_millis() as u64 })).into_response()),
        Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => format!("database: no answer within {} ms", limit.as_millis()),
        Ok(Err(error)) => format!("database: {error}"),
    };
    Err(ApiError { db: Some(DbFailure::AcquireTimeout), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason) })
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

async fn add_model(_: Operator, State(keeper): State<Arc<Keeper>>, body: Payload) -> Result<Response, ApiError> {
    let model: NewModel = body.json()?;
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

async fn set_split(_: Operator, State(keeper): State<Arc<Keeper>>, Path(model_id): Path<String>, body: Payload) -> Result<Response, ApiError> {
    path_model_id(&model_id, true)?;
    let change: SplitChange = body.json()?;
    let notice = keeper.split_notice_now()?;
    catalog::set_model_split(&keeper.pool, keeper.settings.chain_id, &model_id, change.split_id, change.effective_at, notice).await?;
    keeper.refresh().await?;
    Ok(StatusCode::CREATED.into_response())
}

/// A model's split mapping history, public like the model list: creators can see which split a model earns for
/// and from when, and that every change gave the escrow's notice.
async fn get_splits(State(keeper): State<Arc<Keeper>>, Path(model_id): Path<String>) -> Result<Response, ApiError> {
    path_model_id(&model_id, false)?;
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

/// Public like `/healthz`, on the API's address: counts and latencies, no wallet or usage figures.
async fn get_metrics(State(keeper): State<Arc<Keeper>>, Extension(guard): Extension<Arc<HttpGuard>>) -> Response {
    let mut text = keeper.render_metrics();
    keeper.metrics.http.render(&mut text);
    guard.render(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn add_meter(_: Operator, State(keeper): State<Arc<Keeper>>, Path(model_id): Path<String>, body: Payload) -> Result<Response, ApiError> {
    path_model_id(&model_id, true)?;
    let meter: catalog::NewMeter = body.json()?;
    catalog::add_meter(&keeper.pool, &model_id, &meter).await?;
    keeper.refresh().await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn set_price(_: Operator, State(keeper): State<Arc<Keeper>>, body: Payload) -> Result<Response, ApiError> {
    let price: NewPrice = body.json()?;
    catalog::set_price(&keeper.pool, &price).await?;
    keeper.refresh().await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn set_allowance(_: Operator, State(keeper): State<Arc<Keeper>>, body: Payload) -> Result<Response, ApiError> {
    let allowance: NewAllowance = body.json()?;
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
    // Statements show a wallet's usage: the operator fetches them (and hands them to the party), not anyone.
    _: Operator,
    State(keeper): State<Arc<Keeper>>,
    Path((party, address)): Path<(String, String)>,
    query: Result<axum::extract::Query<StatementQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
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
        "subscriber" => {
            let clock = match keeper.chain.get() {
                Some((provider, deployment)) => match statement::ChargeClock::at_cursor(pool, provider, deployment).await {
                    Ok(clock) => Some(clock),
                    Err(error) => {
                        // Still a true statement without the clock: a shortfall is then "not judged yet".
                        tracing::warn!(%error, "reading the chain's clock for a statement; drawing it without");
                        None
                    }
                },
                None => None,
            };
            statement::subscriber_statement_at(pool, chain_id, decimals, address, scope, clock.as_ref()).await?
        }
        other => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("`{other}`: use creator or subscriber"))),
    };
    Ok(Json(statement).into_response())
}
