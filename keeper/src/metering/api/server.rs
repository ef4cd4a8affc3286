//! The HTTP/1.1 server under the router, built on hyper's connection builder (axum's `serve` has no timeouts or
//! connection limit): an accept loop that takes a connection only while fewer than `max_connections` are open,
//! hyper's header-read timeout as the idle limit of a connection waiting for its next request, a watch that
//! closes a connection whose request headers started but did not finish within `header_timeout` or whose client
//! stopped reading an answer for `idle_timeout`, and graceful shutdown (requests in flight are answered, idle
//! connections closed).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, watch},
    time::Instant,
};
use tower::ServiceExt;

use super::{Keeper, limits::HttpGuard, router_with};
use crate::KeeperError;

/// Largest request head (request line and headers) a connection buffers; a longer one is refused with 431. It
/// is also the most a client that never sends a whole request can make the keeper hold per connection.
pub const MAX_HEAD_BYTES: usize = 32 << 10;
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves the API on `addr` under `guard`'s limits until `shutdown` turns true; then answers the requests in
/// flight (for up to 30 s) and returns.
pub async fn serve(keeper: Arc<Keeper>, addr: SocketAddr, guard: Arc<HttpGuard>, mut shutdown: watch::Receiver<bool>) -> Result<(), KeeperError> {
    let listener = TcpListener::bind(addr).await.map_err(|e| KeeperError::Invalid { field: "http_addr".into(), reason: format!("{addr}: {e}") })?;
    let limits = &guard.limits;
    tracing::info!(
        %addr,
        max_connections = limits.max_connections,
        header_timeout_s = limits.header_timeout.as_secs(),
        body_timeout_s = limits.body_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        request_timeout_s = limits.request_timeout.as_secs(),
        max_body_memory = limits.max_body_memory,
        "keeper API listening"
    );
    let app = router_with(keeper, guard.clone());
    let mut http = http1::Builder::new();
    // hyper's header timer runs from when a connection starts waiting for a request (at accept and after each
    // answer), so it is the idle limit; the watch below holds a started request head to the shorter limit.
    http.timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout).max_buf_size(MAX_HEAD_BYTES).keep_alive(true);
    let mut accept_error_logged: Option<Instant> = None;
    loop {
        // A connection slot first: beyond the limit, new connections wait in the kernel's queue, holding no
        // descriptor of this process.
        let slot = tokio::select! {
            slot = guard.connections.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
            () = stopped(&mut shutdown) => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    guard.accept_errors.fetch_add(1, Ordering::Relaxed);
                    // Out of descriptors (or another transient error): log once a second at most, back off.
                    if accept_error_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(%error, open = guard.open_connections(), "accept failed; retrying");
                        accept_error_logged = Some(Instant::now());
                    }
                    drop(slot);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, app.clone(), http.clone(), guard.clone(), shutdown.clone(), slot));
    }
    drop(listener);
    // Every connection has been told to finish; wait until all have handed back their slot.
    let all = u32::try_from(limits.max_connections).expect("max_connections is checked at start");
    if tokio::time::timeout(SHUTDOWN_GRACE, guard.connections.acquire_many(all)).await.is_err() {
        tracing::warn!(open = guard.open_connections(), "shutdown: connections still open after {} s; closing them", SHUTDOWN_GRACE.as_secs());
    }
    Ok(())
}

/// Serves one connection until it ends, its request head is too slow, or shutdown has let its last request
/// finish. `_slot` is its place under the connection limit.
async fn connection(stream: TcpStream, app: Router, http: http1::Builder, guard: Arc<HttpGuard>, mut shutdown: watch::Receiver<bool>, _slot: OwnedSemaphorePermit) {
    let head = Arc::new(HeadWatch::new());
    let io = TokioIo::new(Watched { inner: stream, head: head.clone() });
    let in_request = head.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let busy = in_request.request_started();
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(Body::new)).await;
            drop(busy);
            response
        }
    });
    let conn = http.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            late = head.overdue(guard.limits.header_timeout, guard.limits.idle_timeout) => {
                let counter = match late {
                    Late::Head => &guard.header_timeouts,
                    Late::Send => &guard.send_timeouts,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?late, "closing a connection that is too slow");
                return; // dropping the connection closes the socket
            }
            () = stopped(&mut shutdown), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Completes once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What a connection was too slow at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// Sending a request's headers.
    Head,
    /// Reading an answer (its writes stalled).
    Send,
}

/// Where a connection is between requests: waiting (nothing of a request read yet), reading a request head
/// (since when), or in a request (headers parsed, until its answer is handed to hyper); and since when writes to
/// the client have been stalled, if they are.
#[derive(Debug)]
struct HeadWatch {
    opened: Instant,
    /// Milliseconds after `opened` (plus one) at which the current request head started; 0: none is started.
    head_since: AtomicU64,
    /// Milliseconds after `opened` (plus one) since which a write has found the socket full; 0: not stalled.
    stalled_since: AtomicU64,
    busy: AtomicBool,
    changed: Notify,
}

impl HeadWatch {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            head_since: AtomicU64::new(0),
            stalled_since: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn mark(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// A write found the socket full (`true`) or went through (`false`).
    fn write_stalled(&self, stalled: bool) {
        if !stalled {
            self.stalled_since.store(0, Ordering::Release);
        } else if self.stalled_since.load(Ordering::Acquire) == 0 {
            self.stalled_since.store(self.mark(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: outside a request they begin the next request's head.
    fn bytes_read(&self) {
        if !self.busy.load(Ordering::Acquire) && self.head_since.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.mark(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// The head is parsed and the request is being handled (its body is the body deadline's).
    fn request_started(self: &Arc<Self>) -> Busy {
        self.busy.store(true, Ordering::Release);
        self.head_since.store(0, Ordering::Release);
        self.changed.notify_one();
        Busy(self.clone())
    }

    /// Completes once a started request head is older than `head_limit`, or writes have been stalled for
    /// `send_limit`.
    async fn overdue(&self, head_limit: Duration, send_limit: Duration) -> Late {
        loop {
            let changed = self.changed.notified();
            let watches = [(Late::Head, &self.head_since, head_limit), (Late::Send, &self.stalled_since, send_limit)];
            let next = watches
                .iter()
                .filter_map(|(late, since, limit)| match since.load(Ordering::Acquire) {
                    0 => None,
                    mark => Some((self.opened + Duration::from_millis(mark - 1) + *limit, *late, *since, mark)),
                })
                .min_by_key(|(deadline, ..)| *deadline);
            let Some((deadline, late, since, mark)) = next else {
                changed.await;
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if since.load(Ordering::Acquire) == mark {
                        return late;
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// A request being handled; when dropped (answered, or abandoned) the connection waits for the next one.
struct Busy(Arc<HeadWatch>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// The socket, telling the watch when bytes arrive.
struct Watched {
    inner: TcpStream,
    head: Arc<HeadWatch>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.head.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.head.write_stalled(polled.is_pending());
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.head.write_stalled(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises this process's soft limit of open files to its hard limit, so that `max_connections` sockets fit;
/// returns (before, after). The hard limit is the administrator's to set (systemd `LimitNOFILE=`, `ulimit -Hn`).
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let before = current.current.unwrap_or(u64::MAX);
    // "Unlimited" is not a value Linux takes for open files; its own ceiling (fs.nr_open) is 2^20 by default.
    let hard = current.maximum.unwrap_or(1 << 20);
    if before >= hard {
        return Ok((before, before));
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: current.maximum }).map_err(io::Error::from)?;
    Ok((before, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        let (before, after) = raise_open_files_limit().expect("raising the soft limit to the hard one is always allowed");
        assert!(after >= before);
        let now = getrlimit(Resource::Nofile);
        match now.maximum {
            Some(hard) => assert_eq!(now.current, Some(hard), "{now:?}"),
            None => assert!(now.current.is_none_or(|soft| soft >= 1 << 20), "{now:?}"),
        }
        assert_eq!(raise_open_files_limit().unwrap().0, after, "a second call finds it raised");
    }
}
