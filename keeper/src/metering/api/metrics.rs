//! What `serve` counts about its HTTP traffic for `/metrics`: answers by route, method and status, latency
//! histograms per route, and the requests answered 503 because Postgres could not be reached.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::Response,
};

use super::Keeper;
use crate::metrics::{Histogram, LATENCY_BUCKETS, label};

/// Why a request was answered 503 for the database, carried from the error to the counter in a response
/// extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// No connection within the pool's acquire timeout: Postgres is down, unreachable or saturated.
    AcquireTimeout,
    /// Any other database error.
    Error,
}

/// Per-process HTTP counters.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// route -> method -> figures. Routes are the router's templates (`/v1/entitlement/{subscriber}`), or
    /// `unmatched`; methods outside the standard ones are `other`, so a client cannot grow the label set.
    routes: RwLock<BTreeMap<String, BTreeMap<&'static str, Arc<RouteFigures>>>>,
    acquire_timeouts: AtomicU64,
    db_errors: AtomicU64,
}

#[derive(Debug)]
struct RouteFigures {
    latency: Histogram,
    statuses: Mutex<BTreeMap<u16, u64>>,
}

impl HttpMetrics {
    fn figures(&self, route: &str, method: &'static str) -> Arc<RouteFigures> {
        if let Some(found) = self.routes.read().expect("metrics lock").get(route).and_then(|m| m.get(method)) {
            return found.clone();
        }
        let mut routes = self.routes.write().expect("metrics lock");
        routes
            .entry(route.to_owned())
            .or_default()
            .entry(method)
            .or_insert_with(|| Arc::new(RouteFigures { latency: Histogram::new(LATENCY_BUCKETS), statuses: Mutex::default() }))
            .clone()
    }

    fn record(&self, route: &str, method: &'static str, status: u16, seconds: f64, db: Option<DbFailure>) {
        let figures = self.figures(route, method);
        figures.latency.observe(seconds);
        *figures.statuses.lock().expect("metrics lock").entry(status).or_default() += 1;
        match db {
            Some(DbFailure::AcquireTimeout) => self.acquire_timeouts.fetch_add(1, Ordering::Relaxed),
            Some(DbFailure::Error) => self.db_errors.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    /// Answers of `status` on `route` so far (all methods).
    pub fn responses(&self, route: &str, status: u16) -> u64 {
        let routes = self.routes.read().expect("metrics lock");
        routes.get(route).map_or(0, |methods| methods.values().map(|f| *f.statuses.lock().expect("metrics lock").get(&status).unwrap_or(&0)).sum())
    }

    /// The text exposition.
    pub fn render(&self, out: &mut String) {
        let routes = self.routes.read().expect("metrics lock");
        out.push_str("# HELP subsettle_keeper_http_responses_total Answers by route, method and status.\n# TYPE subsettle_keeper_http_responses_total counter\n");
        for (route, methods) in routes.iter() {
            for (method, figures) in methods {
                for (status, count) in figures.statuses.lock().expect("metrics lock").iter() {
                    let _ = writeln!(out, "subsettle_keeper_http_responses_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {count}", label(route));
                }
            }
        }
        out.push_str("# HELP subsettle_keeper_http_request_seconds Time from a request's headers to its answer, by route and method.\n# TYPE subsettle_keeper_http_request_seconds histogram\n");
        for (route, methods) in routes.iter() {
            for (method, figures) in methods {
                figures.latency.render("subsettle_keeper_http_request_seconds", &format!("route=\"{}\",method=\"{method}\"", label(route)), out);
            }
        }
        let _ = write!(
            out,
            "# HELP subsettle_keeper_db_unavailable_total Requests answered 503 because of the database: no connection within the acquire timeout, or another error.\n\
             # TYPE subsettle_keeper_db_unavailable_total counter\n\
             subsettle_keeper_db_unavailable_total{{cause=\"acquire_timeout\"}} {}\nsubsettle_keeper_db_unavailable_total{{cause=\"error\"}} {}\n",
            self.acquire_timeouts.load(Ordering::Relaxed),
            self.db_errors.load(Ordering::Relaxed),
        );
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: times each request and counts its answer under its route.
pub(crate) async fn observe(State(keeper): State<Arc<Keeper>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let db = response.extensions().get::<DbFailure>().copied();
    keeper.metrics.http.record(&route, method, response.status().as_u16(), started.elapsed().as_secs_f64(), db);
    response
}
