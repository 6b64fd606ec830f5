//! The HTTP server: the accept loop, and the limits that keep slow or
//! idle clients from holding the service.
//!
//! - A client has [`ServerConfig::header_read_timeout`] to send a request's
//!   head, on a new connection and between requests on a kept-alive one.
//!   hyper starts that timer whenever it waits for a head: on a new
//!   connection before the first byte, and again when a kept-alive one goes
//!   idle after a response (its `State::idle` re-arms it, hyperium/hyper#3828;
//!   read in hyper 1.12). Bytes trickling in do not restart it; when it
//!   fires, hyper closes the connection without an answer.
//! - A response that cannot be written for
//!   [`ServerConfig::write_stall_timeout`] (the client reads nothing and its
//!   socket is full) closes its connection: a client that stops reading,
//!   an event stream's included, does not hold its connection (one of
//!   [`ServerConfig::max_connections`]; for a stream, one of its slots too).
//! - At most [`ServerConfig::max_connections`] connections are open. At the
//!   cap, a new connection closes the oldest one with no request in flight
//!   (one still sending its head, or idle between requests); when every
//!   connection is busy, the loop stops accepting and new connections wait
//!   in the kernel's backlog until one ends.
//! - Request heads over [`MAX_URI_BYTES`], [`MAX_HEADERS`] or
//!   [`MAX_HEAD_BYTES`] are answered 414 or 431 in problem+json here, before
//!   the router. hyper's own limits are set above ours, so only heads far
//!   beyond them, or ones hyper cannot parse, get hyper's bare answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, StatusCode, Uri, header};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::api::error::problem;

/// The longest request target (path and query) answered; longer is a 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header fields in a request; more is a 431.
pub const MAX_HEADERS: usize = 100;
/// The largest request head (request line and header fields); larger is a 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// hyper's own header count limit, above [`MAX_HEADERS`] so that ours
/// answers first. hyper allocates room for this many per parse.
const HYPER_MAX_HEADERS: usize = 256;
/// hyper's read buffer limit, and so its limit on a head: twice
/// [`MAX_HEAD_BYTES`], so that ours answers first. It is also the most a
/// client can make the server buffer while it sends its head.
const HYPER_MAX_BUF_BYTES: usize = 2 * MAX_HEAD_BYTES;

/// Connections the kernel holds until the loop accepts them. A burst larger
/// than this has its SYNs dropped, and clients retry only a second later;
/// tokio's default is 128. Linux caps it at `net.core.somaxconn`.
pub const BACKLOG: u32 = 1024;

/// How long the accept loop waits after an error such as running out of
/// file descriptors, rather than spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How the server treats its clients.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The time a client has to send a request's head; also how long an
    /// idle kept-alive connection stays open.
    pub header_read_timeout: Duration,
    /// How long a write may wait for a client that reads nothing.
    pub write_stall_timeout: Duration,
    /// The most open connections.
    pub max_connections: usize,
}

/// Listens on `address`, with room for [`BACKLOG`] connections not yet accepted.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting, closes connections with no request in flight, and returns
/// once the requests in flight are answered.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    warn_if_over_open_file_limit(config.max_connections);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_BUF_BYTES);
    let http = Arc::new(http);
    let connections = Arc::new(Connections::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    while let Some(stream) = accept(&listener, shutdown.as_mut()).await {
        let Some(permit) = connections.make_room(shutdown.as_mut()).await else {
            break;
        };
        tokio::spawn(serve_connection(
            StallGuard::new(stream, config.write_stall_timeout),
            app.clone(),
            http.clone(),
            graceful.watcher(),
            connections.register(),
            permit,
        ));
    }
    drop(listener);
    let closed = connections.evict_all_idle();
    tracing::info!(
        closed_idle = closed,
        still_open = graceful.count(),
        "stopped accepting connections"
    );
    graceful.shutdown().await;
}

/// Warns when `max_connections` leaves too few of the process's open files
/// (its soft limit, read on Linux) for everything else.
fn warn_if_over_open_file_limit(max_connections: usize) {
    /// The database pool, the listener, logs and the runtime's own.
    const OTHER_FILES: u64 = 64;
    let Some(limit) = open_file_limit() else {
        return;
    };
    if max_connections as u64 + OTHER_FILES > limit {
        tracing::warn!(
            max_connections,
            open_file_limit = limit,
            "--max-connections does not fit in the open-file limit: under load, accepting \
             and database connections may fail; lower it or raise `ulimit -n`"
        );
    }
}

/// The soft limit on open files, from `/proc/self/limits`; `None` if unknown or unlimited.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The next connection, or `None` once `shutdown` resolves.
async fn accept<S: Future<Output = ()>>(
    listener: &TcpListener,
    mut shutdown: Pin<&mut S>,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            biased;
            () = shutdown.as_mut() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in a second");
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => return None,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
}

/// Errors of one connection, not of the listener: try the next.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, times out, or is evicted.
async fn serve_connection(
    stream: StallGuard<TcpStream>,
    app: Router,
    http: Arc<http1::Builder>,
    watcher: Watcher,
    registered: Registered,
    _permit: OwnedSemaphorePermit,
) {
    let slot = registered.slot.clone();
    let service = service_fn(move |request| {
        let (app, slot) = (app.clone(), slot.clone());
        async move { Ok::<_, Infallible>(respond(app, &slot, request).await) }
    });
    let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                if stalled(&e) {
                    crate::metrics::http_connection_closed("write_stalled");
                    tracing::info!("a client read nothing for the write stall timeout: connection closed");
                } else if e.is_timeout() {
                    crate::metrics::http_connection_closed("header_timeout");
                }
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = registered.slot.evicted.notified() => {
            crate::metrics::http_connection_closed("evicted");
            tracing::debug!("idle connection closed to make room for a new one");
        }
    }
}

/// Whether hyper's error is a [`StallGuard`]'s.
fn stalled(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.get_ref().is_some_and(|inner| inner.is::<WriteStalled>()))
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The error a [`StallGuard`] fails a write with.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing for the write stall timeout")]
struct WriteStalled;

/// A connection whose writes fail once they have waited `limit` for the
/// client to read: the timer starts when a write cannot go on, and any
/// progress stops it.
struct StallGuard<S> {
    inner: S,
    limit: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            waiting: None,
        }
    }

    /// What a write that returned `polled` comes to: progress stops the
    /// timer; waiting starts it, and fails once it has run out.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                WriteStalled,
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request: refused if its connection was just evicted or its head is
/// over our limits, else the router's answer. The connection counts as busy
/// until the response body has been sent.
async fn respond(app: Router, slot: &Arc<Slot>, request: Request<Incoming>) -> Response {
    let Some(in_flight) = slot.begin() else {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("the server is closing this connection".into()),
            Vec::new(),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    let response = match head_problem(&request) {
        Some(response) => response,
        None => match app.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
    };
    response.map(|body| {
        Body::new(Tracked {
            body,
            _in_flight: in_flight,
        })
    })
}

/// The 414 or 431 for a head over our limits, or `None` when it is within them.
fn head_problem<B>(request: &Request<B>) -> Option<Response> {
    let uri = uri_len(request.uri());
    let (status, detail) = if uri > MAX_URI_BYTES {
        (
            StatusCode::URI_TOO_LONG,
            format!("the request target is {uri} bytes; at most {MAX_URI_BYTES} are accepted"),
        )
    } else if request.headers().len() > MAX_HEADERS {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request has {} header fields; at most {MAX_HEADERS} are accepted",
                request.headers().len()
            ),
        )
    } else {
        // The request line and the fields as they were sent, give or take whitespace.
        let head = request.method().as_str().len()
            + uri
            + " HTTP/1.1\r\n".len()
            + request
                .headers()
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
                .sum::<usize>();
        if head <= MAX_HEAD_BYTES {
            return None;
        }
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request head is {head} bytes; at most {MAX_HEAD_BYTES} are accepted"),
        )
    };
    crate::metrics::http_request(
        crate::api::metrics::method_label(request.method()),
        "unmatched",
        status.as_u16(),
        Duration::ZERO,
    );
    let mut response = problem(status, Some(detail), Vec::new());
    // The client may well send more of the same: let it start afresh.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// The length of a request target as sent: origin form, or absolute form.
fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

/// The open connections, oldest first, and room for more.
struct Connections {
    max: usize,
    permits: Arc<Semaphore>,
    open: Mutex<BTreeMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    /// When the loop last said that every connection was busy.
    warned_full: Mutex<Option<Instant>>,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max,
            permits: Arc::new(Semaphore::new(max)),
            open: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            warned_full: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection, listed until the returned value drops.
    fn register(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        let open = {
            let mut open = self.lock();
            open.insert(id, slot.clone());
            open.len()
        };
        crate::metrics::http_connections_open(open);
        Registered {
            connections: self.clone(),
            id,
            slot,
        }
    }

    /// Room for one more connection: a free place; else the place of the
    /// oldest idle connection, evicted; else, when every connection has a
    /// request in flight, the first place to free up. `None` once
    /// `shutdown` resolves.
    async fn make_room<S: Future<Output = ()>>(
        &self,
        shutdown: Pin<&mut S>,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        if !self.evict_oldest_idle() {
            let mut warned = self
                .warned_full
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                *warned = Some(Instant::now());
                tracing::warn!(
                    max_connections = self.max,
                    "every connection has a request in flight; new connections wait until one ends"
                );
            }
        }
        tokio::select! {
            biased;
            () = shutdown => None,
            permit = self.permits.clone().acquire_owned() => permit.ok(),
        }
    }

    /// Evicts the oldest connection with no request in flight; false if
    /// every connection is busy.
    fn evict_oldest_idle(&self) -> bool {
        self.lock().values().any(|slot| slot.evict_if_idle())
    }

    /// Evicts every connection with no request in flight; returns how many.
    fn evict_all_idle(&self) -> usize {
        self.lock()
            .values()
            .filter(|slot| slot.evict_if_idle())
            .count()
    }
}

/// A listed connection; unlisted when dropped.
struct Registered {
    connections: Arc<Connections>,
    id: u64,
    slot: Arc<Slot>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let open = {
            let mut open = self.connections.lock();
            open.remove(&self.id);
            open.len()
        };
        crate::metrics::http_connections_open(open);
    }
}

/// One connection: how many requests it has in flight, or [`EVICTED`].
#[derive(Debug, Default)]
struct Slot {
    state: AtomicUsize,
    evicted: Notify,
}

/// The state of a connection that is being closed: it takes no more requests.
const EVICTED: usize = usize::MAX;

impl Slot {
    /// A request starts on this connection, unless it was evicted.
    fn begin(self: &Arc<Self>) -> Option<InFlight> {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n != EVICTED).then(|| n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }

    /// Evicts the connection if no request is in flight on it. A request
    /// that starts after this is refused, so none is ever cut short.
    fn evict_if_idle(&self) -> bool {
        let evicted = self
            .state
            .compare_exchange(0, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if evicted {
            self.evicted.notify_one();
        }
        evicted
    }
}

/// A request in flight, until its response body is dropped.
struct InFlight(Arc<Slot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it is sent.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(String, String)]) -> Request<()> {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn heads_within_the_limits_pass() {
        let headers: Vec<_> = (0..MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), "v".repeat(100)))
            .collect();
        let uri = format!("/api/v1/resources?name={}", "a".repeat(8000));
        assert!(head_problem(&request(&uri, &headers)).is_none());
    }

    #[test]
    fn an_over_long_uri_is_414() {
        let uri = format!("/api/v1/resources?name={}", "a".repeat(MAX_URI_BYTES));
        let response = head_problem(&request(&uri, &[])).unwrap();
        assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn too_many_or_too_large_headers_are_431() {
        let many: Vec<_> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), "v".into()))
            .collect();
        let large = vec![("x-big".to_owned(), "v".repeat(MAX_HEAD_BYTES))];
        for headers in [many, large] {
            let response = head_problem(&request("/", &headers)).unwrap();
            assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            );
        }
    }

    #[test]
    fn an_idle_connection_is_evicted_and_then_refuses_requests() {
        let slot = Arc::new(Slot::default());
        let busy = slot.begin().unwrap();
        assert!(!slot.evict_if_idle(), "a busy connection is not evicted");
        drop(busy);
        assert!(slot.evict_if_idle());
        assert!(
            slot.begin().is_none(),
            "an evicted connection takes no request"
        );
    }

    #[test]
    fn the_oldest_idle_connection_goes_first() {
        let connections = Arc::new(Connections::new(3));
        let (a, b, c) = (
            connections.register(),
            connections.register(),
            connections.register(),
        );
        let _busy = a.slot.begin().unwrap();
        assert!(connections.evict_oldest_idle());
        assert_eq!(b.slot.state.load(Ordering::Acquire), EVICTED);
        assert_eq!(c.slot.state.load(Ordering::Acquire), 0);
        drop(b);
        assert_eq!(connections.evict_all_idle(), 1);
        assert!(
            !connections.evict_oldest_idle(),
            "only a busy connection is left"
        );
    }
}
