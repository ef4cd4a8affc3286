//! What the API holds against slow, idle and unauthenticated clients: the time each part of a request may take,
//! how many connections are open at once, and how many request-body bytes are held in memory at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::Request,
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

use super::ApiError;
use crate::KeeperError;

/// The server's limits (the `serve` flags of the same names; defaults in `docs/keeper.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this after its first byte, else the connection is closed.
    pub header_timeout: Duration,
    /// A request's body must arrive within this after its headers, else 408.
    pub body_timeout: Duration,
    /// A connection with no request in flight is closed after this long (a gateway's keep-alive connections
    /// must be dropped by it first, so set its idle timeout lower); so is one whose client has not read any of
    /// an answer for this long.
    pub idle_timeout: Duration,
    /// A request gets an answer within this, body included; else 503.
    pub request_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
    /// Request-body bytes held in memory at once, over all requests (a body reserves its `Content-Length`, or
    /// `max_body_bytes` when it has none, before it is read).
    pub max_body_memory: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_body_memory: 256 << 20,
        }
    }
}

impl HttpLimits {
    /// Checks the limits against each other and the largest body, naming the setting at fault.
    pub fn check(&self, max_body_bytes: usize) -> Result<(), KeeperError> {
        let bad = |field: &str, reason: String| Err(KeeperError::Invalid { field: field.into(), reason });
        for (field, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return bad(field, "must be at least 1s".into());
            }
        }
        if self.request_timeout <= self.body_timeout {
            return bad(
                "request_timeout",
                format!("{:?} must be longer than body_timeout ({:?}): it bounds the whole request, body included", self.request_timeout, self.body_timeout),
            );
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad("max_connections", format!("{} is not between 1 and 1000000", self.max_connections));
        }
        if self.max_body_memory < max_body_bytes || self.max_body_memory > u32::MAX as usize {
            return bad(
                "max_body_memory",
                format!("{} must be at least max_body_bytes ({max_body_bytes}) and at most {}", self.max_body_memory, u32::MAX),
            );
        }
        Ok(())
    }
}

/// The limits in force and the state they are enforced with, shared by the accept loop, the connections, the
/// body extractor and `/metrics`.
#[derive(Debug)]
pub struct HttpGuard {
    /// The limits.
    pub limits: HttpLimits,
    /// The largest body (from the settings).
    pub max_body_bytes: usize,
    /// One permit per connection that may be open.
    pub(crate) connections: Arc<Semaphore>,
    /// One permit per body byte that may be held.
    pub(crate) body_bytes: Arc<Semaphore>,
    /// Connections closed because their headers came too slowly.
    pub(crate) header_timeouts: AtomicU64,
    /// Connections closed because their client stopped reading an answer for `idle_timeout`.
    pub(crate) send_timeouts: AtomicU64,
    /// Requests answered 408 because their body came too slowly.
    pub(crate) body_timeouts: AtomicU64,
    /// Requests answered 503 because the request took longer than `request_timeout`.
    pub(crate) request_timeouts: AtomicU64,
    /// Requests answered 503 because body memory stayed full until their body deadline.
    pub(crate) body_memory_full: AtomicU64,
    /// Failed `accept` calls (e.g. out of file descriptors).
    pub(crate) accept_errors: AtomicU64,
}

impl HttpGuard {
    /// The guard for `limits` and bodies of at most `max_body_bytes`.
    pub fn new(limits: HttpLimits, max_body_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            body_bytes: Arc::new(Semaphore::new(limits.max_body_memory)),
            limits,
            max_body_bytes,
            header_timeouts: AtomicU64::new(0),
            send_timeouts: AtomicU64::new(0),
            body_timeouts: AtomicU64::new(0),
            request_timeouts: AtomicU64::new(0),
            body_memory_full: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections.saturating_sub(self.connections.available_permits())
    }

    /// Request-body bytes reserved now.
    pub fn body_bytes_in_flight(&self) -> usize {
        self.limits.max_body_memory.saturating_sub(self.body_bytes.available_permits())
    }

    /// The text exposition of the guard's gauges and counters.
    pub fn render(&self, out: &mut String) {
        let counter = |value: &AtomicU64| value.load(Ordering::Relaxed);
        out.push_str(&format!(
            "# HELP subsettle_keeper_http_connections Connections open now.\n# TYPE subsettle_keeper_http_connections gauge\nsubsettle_keeper_http_connections {}\n\
             # HELP subsettle_keeper_http_max_connections Connections served at once (--max-connections).\n# TYPE subsettle_keeper_http_max_connections gauge\nsubsettle_keeper_http_max_connections {}\n\
             # HELP subsettle_keeper_http_body_bytes_in_flight Request-body bytes reserved in memory now.\n# TYPE subsettle_keeper_http_body_bytes_in_flight gauge\nsubsettle_keeper_http_body_bytes_in_flight {}\n\
             # HELP subsettle_keeper_http_max_body_memory Request-body bytes that may be held at once (--max-body-memory).\n# TYPE subsettle_keeper_http_max_body_memory gauge\nsubsettle_keeper_http_max_body_memory {}\n\
             # HELP subsettle_keeper_http_timeouts_total Connections closed or requests refused for taking too long, by what was slow.\n# TYPE subsettle_keeper_http_timeouts_total counter\n\
             subsettle_keeper_http_timeouts_total{{part=\"header\"}} {}\nsubsettle_keeper_http_timeouts_total{{part=\"body\"}} {}\nsubsettle_keeper_http_timeouts_total{{part=\"request\"}} {}\nsubsettle_keeper_http_timeouts_total{{part=\"send\"}} {}\n\
             # HELP subsettle_keeper_http_body_memory_full_total Requests answered 503 because body memory stayed full until their body deadline.\n# TYPE subsettle_keeper_http_body_memory_full_total counter\nsubsettle_keeper_http_body_memory_full_total {}\n\
             # HELP subsettle_keeper_http_accept_errors_total Failed accepts of new connections (e.g. out of file descriptors).\n# TYPE subsettle_keeper_http_accept_errors_total counter\nsubsettle_keeper_http_accept_errors_total {}\n",
            self.open_connections(),
            self.limits.max_connections,
            self.body_bytes_in_flight(),
            self.limits.max_body_memory,
            counter(&self.header_timeouts),
            counter(&self.body_timeouts),
            counter(&self.request_timeouts),
            counter(&self.send_timeouts),
            counter(&self.body_memory_full),
            counter(&self.accept_errors),
        ));
    }
}

/// Middleware: a request not answered within `request_timeout` (its body included) is answered 503; the work
/// in flight is dropped, as when a client goes away (a resend of an ingest batch is recognised event by event).
pub(crate) async fn deadline(request: Request, next: Next) -> Response {
    let guard = request.extensions().get::<Arc<HttpGuard>>().cloned().expect("the router installs the HTTP guard");
    match tokio::time::timeout(guard.limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            guard.request_timeouts.fetch_add(1, Ordering::Relaxed);
            let message = format!("the keeper did not finish the request within {} s; retry", guard.limits.request_timeout.as_secs());
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", message).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_against_each_other() {
        assert!(HttpLimits::default().check(8 << 20).is_ok());
        let short = HttpLimits { request_timeout: Duration::from_secs(30), ..HttpLimits::default() };
        assert!(short.check(8 << 20).unwrap_err().to_string().starts_with("request_timeout:"));
        let small = HttpLimits { max_body_memory: 1 << 20, ..HttpLimits::default() };
        assert!(small.check(8 << 20).unwrap_err().to_string().starts_with("max_body_memory:"));
        let zero = HttpLimits { header_timeout: Duration::ZERO, ..HttpLimits::default() };
        assert!(zero.check(8 << 20).unwrap_err().to_string().starts_with("header_timeout:"));
    }
}
