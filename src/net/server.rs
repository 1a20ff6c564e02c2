//! The HTTP server every role runs: a server is a value (spawn → [`ServerHandle`] with its
//! address and shutdown), bodies are read with hard limits, replies are JSON or bytes, and
//! errors are `{"error": sentence}` with a status. One shutdown signal ([`Shutdown`]) reaches
//! the accept loop, the connections and every background worker; workers finish the step they
//! are in, connections their requests in flight.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytes::BytesMut;
use futures::future::{BoxFuture, Either};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::metrics::Metrics;
use crate::proto::ErrorBody;
use crate::sys::pool::Buf;

pub type Body = Full<Bytes>;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("data directory {dir}")]
    DataDir { dir: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("database in {dir} (is another process using this data directory?)")]
    Db { dir: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
}

/// An error's message followed by each of its causes: for answers that travel as one sentence.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s = format!("{s}: {c}");
        cause = c.source();
    }
    s
}

/// The query string as key → value (ids and numbers only: no percent-decoding needed).
pub fn parse_query(query: Option<&str>) -> std::collections::HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An error answer: status and a sentence for the caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn forbidden(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, m)
    }
    /// A failure of the server itself; the message carries the error's whole cause chain.
    pub fn internal(e: impl std::error::Error) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e))
    }
}

pub type ApiResult = Result<Response<Body>, ApiError>;

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("wire types serialize");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

pub fn ok<T: Serialize>(value: &T) -> ApiResult {
    Ok(json(StatusCode::OK, value))
}

/// The Prometheus text exposition of `m`.
pub fn metrics_text(m: &Metrics) -> Response<Body> {
    bytes("text/plain; version=0.0.4", Bytes::from(m.render()))
}

pub fn bytes(content_type: &str, b: Bytes) -> Response<Body> {
    Response::builder().header("content-type", content_type).body(Full::new(b)).expect("valid response")
}

/// Headers every answer carries: the web UI's content may only come from this server and may
/// not be framed, content types are not guessed, and no page leaks its URL (file ids) to
/// another site.
fn harden(h: &mut hyper::HeaderMap) {
    use hyper::header::HeaderValue;
    const CSP: &str =
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

fn error_response(e: ApiError) -> Response<Body> {
    json(e.status, &ErrorBody { error: e.message })
}

/// Reads a body of at most `limit` bytes; more is 413, without reading it all.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = declared_len(req.headers());
    read_body_limited(req.into_body(), declared, limit).await
}

/// As [`read_body`], for a body whose request head was taken apart (`declared`: its
/// Content-Length).
pub async fn read_body_limited(body: Incoming, declared: Option<u64>, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    read_frames(body, declared, limit, |d| buf.extend_from_slice(d)).await?;
    Ok(buf.freeze())
}

/// Reads a body of at most `limit` bytes into one page-aligned buffer: the single copy out of
/// hyper's read buffers, after which the disk can take the bytes without another. `inspect`
/// sees every piece as it arrives, while it is still in cache (to hash it, say).
pub async fn read_body_aligned(
    req: Request<Incoming>,
    limit: usize,
    mut inspect: impl FnMut(&[u8]),
) -> Result<Buf, ApiError> {
    let declared = declared_len(req.headers());
    let mut buf = Buf::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    read_frames(req.into_body(), declared, limit, |d| {
        inspect(d);
        buf.extend_from_slice(d)
    })
    .await?;
    Ok(buf)
}

/// The Content-Length a request declares.
pub fn declared_len(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// A request body that sends nothing for this long is abandoned.
const BODY_STALL: Duration = Duration::from_secs(30);

/// A reply the client stops reading for this long is abandoned, with its connection: replies
/// hold memory (a browser's sealed segment is megabytes) until they are read.
const WRITE_STALL: Duration = Duration::from_secs(60);

/// A connection whose writes fail once they made no progress for [`WRITE_STALL`].
struct WriteStall<I> {
    io: I,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteStall<I> {
    /// `result` of a write or flush, or a timeout once writes have waited too long.
    fn watch<T>(&mut self, cx: &mut std::task::Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for WriteStall<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for WriteStall<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Bodies up to this size are drained before a 413 answer.
const DRAIN_LIMIT: u64 = 4 << 20;

/// Feeds the body's bytes to `push`, refusing (413) as soon as more than `limit` arrive.
async fn read_frames(
    mut body: Incoming,
    declared: Option<u64>,
    limit: usize,
    mut push: impl FnMut(&[u8]),
) -> Result<(), ApiError> {
    let too_big = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {limit} bytes"));
    if let Some(len) = declared.filter(|l| *l > limit as u64) {
        // A body a little too large is read and dropped, so the client sees the 413 rather
        // than a reset connection; a huge one is not read at all.
        if len <= DRAIN_LIMIT {
            let _ = Limited::new(body, DRAIN_LIMIT as usize).collect().await;
        }
        return Err(too_big());
    }
    let mut total = 0usize;
    loop {
        // A body that stalls holds a connection: each piece must come within the timeout.
        let next = tokio::time::timeout(BODY_STALL, body.frame()).await;
        let next = next.map_err(|_| ApiError::new(StatusCode::REQUEST_TIMEOUT, "the body stalled; giving up"))?;
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the body failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > limit {
                return Err(too_big());
            }
            push(&data);
        }
    }
    Ok(())
}

pub async fn read_json<T: DeserializeOwned>(req: Request<Incoming>, limit: usize) -> Result<T, ApiError> {
    let b = read_body(req, limit).await?;
    serde_json::from_slice(&b).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

/// The signal that tells servers and workers to stop; clones share it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Pulls the trigger of a [`Shutdown`].
pub struct Trigger(watch::Sender<bool>);

/// A shutdown signal and its trigger.
pub fn shutdown_signal() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is asked for (at once if it already was).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps `d`, or less if shutdown comes first; true when it came.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => true,
            _ = tokio::time::sleep(d) => self.is_set(),
        }
    }
}

/// How long requests in flight and workers' current steps may take to finish at shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// A running server: its address, and how to stop it.
pub struct ServerHandle {
    pub addr: SocketAddr,
    trigger: Trigger,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, lets requests in flight and workers' current steps finish (for a few
    /// seconds at most), and waits until every task has ended.
    pub async fn shutdown(self) {
        self.trigger.fire();
        let _ = self.task.await;
    }

    /// The same server, whose shutdown also waits for `done` (once every task has ended).
    pub fn then(self, done: impl Future<Output = ()> + Send + 'static) -> ServerHandle {
        let task = self.task;
        ServerHandle {
            task: tokio::spawn(async move {
                let _ = task.await;
                done.await;
            }),
            ..self
        }
    }
}

/// Where a server listens: a bound socket, TLS when it serves HTTPS, and how many
/// connections it keeps.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: ConnectionLimits,
}

/// Bounds on what connections may hold. Chosen for the server's side of abuse: half-open
/// and idle connections are closed after `header_timeout`, and one address cannot take all
/// the connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the kernel's backlog.
    pub total: usize,
    /// Connections open at once from one IP address; more are closed at once.
    pub per_address: usize,
    /// Time to send a request's headers, and to start the next request on a kept-alive
    /// connection.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { total: 4096, per_address: 256, header_timeout: Duration::from_secs(10) }
    }
}

impl ConnectionLimits {
    /// These limits, lowered to fit the process's file descriptors: at most half of them for
    /// connections (the rest for files, the database and outgoing requests), and a quarter of
    /// those for one address, so a flood from one address cannot exhaust them. The soft limit
    /// is first raised to the hard one.
    fn within_fd_limit(self) -> ConnectionLimits {
        let fds = raise_fd_limit();
        let total = self.total.min((fds / 2).max(8));
        ConnectionLimits { total, per_address: self.per_address.min((total / 4).max(2)), ..self }
    }

    /// From `(total, per_address, header_timeout)` (the configuration's `[limits]`).
    pub fn from_parts((total, per_address, header_timeout): (usize, usize, Duration)) -> ConnectionLimits {
        ConnectionLimits { total, per_address, header_timeout }
    }
}

impl Listener {
    /// A plain HTTP listener with default limits.
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None, limits: ConnectionLimits::default() }
    }

    /// The URL scheme clients use to reach it.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Raises the soft limit on open files to the hard one; returns the limit now in force.
pub(crate) fn raise_fd_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid pointer to an rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// The remote address of a request, put in its extensions by the server loop.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// A TLS handshake that has not finished after this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed accept (out of file descriptors, say), wait this long before the next:
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type Handler<F> = Arc<dyn Fn(Request<Incoming>) -> F + Send + Sync>;

/// A role's name for a request's route in metrics: one of its known routes, or `other`.
pub type Labeler = fn(&hyper::Method, &str) -> &'static str;

/// Counts connections per address; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct PerAddress(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

struct AddressSlot(PerAddress, std::net::IpAddr);

impl PerAddress {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<AddressSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serves `handler` on `listener` until `trigger` fires. `workers` run beside it (heartbeats,
/// audits, repair…), watching the same signal, and are waited for when it stops.
pub fn serve<H, F>(
    listener: Listener,
    (metrics, labels): (Arc<Metrics>, Labeler),
    handler: H,
    (trigger, shutdown): (Trigger, Shutdown),
    workers: Vec<BoxFuture<'static, ()>>,
) -> ServerHandle
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = ApiResult> + Send + 'static,
{
    let addr = listener.tcp.local_addr().expect("bound listener has an address");
    let handler: Handler<F> = Arc::new(handler);
    let tls = listener.tls.map(tokio_rustls::TlsAcceptor::from);
    let limits = listener.limits.within_fd_limit();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.total));
    let per_address = PerAddress::default();
    let mut stop = shutdown.clone();
    let mut workers: JoinSet<()> = workers.into_iter().collect();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            // At the cap, stop accepting until a connection ends: new ones wait in the backlog.
            let slot = tokio::select! {
                _ = stop.wait() => break,
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let (stream, remote) = tokio::select! {
                _ = stop.wait() => break,
                accepted = listener.tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            while conns.try_join_next().is_some() {}
            let Some(address_slot) = per_address.take(remote.ip(), limits.per_address) else {
                continue; // dropped: this address holds its share already
            };
            let _ = stream.set_nodelay(true);
            let (h, m, stop, tls) = (handler.clone(), (metrics.clone(), labels), stop.clone(), tls.clone());
            conns.spawn(async move {
                let _slots = (slot, address_slot);
                let Some(acceptor) = tls else {
                    return connection(TokioIo::new(stream), remote, limits, h, m, stop).await;
                };
                // A failed or slow handshake has nothing to answer.
                if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    connection(TokioIo::new(tls), remote, limits, h, m, stop).await
                }
            });
        }
        drop(listener.tcp);
        let finish = async {
            while conns.join_next().await.is_some() {}
            while workers.join_next().await.is_some() {}
        };
        if tokio::time::timeout(GRACE, finish).await.is_err() {
            tracing::warn!("shutdown: requests or workers still busy after {GRACE:?}; stopping them");
        }
        conns.shutdown().await;
        workers.shutdown().await;
    });
    ServerHandle { addr, trigger, task }
}

/// Serves one connection until it closes, or finishes its request in flight at shutdown.
async fn connection<I, F>(
    io: I,
    remote: std::net::SocketAddr,
    limits: ConnectionLimits,
    h: Handler<F>,
    (m, labels): (Arc<Metrics>, Labeler),
    mut stop: Shutdown,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Future<Output = ApiResult> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(RemoteAddr(remote));
        let (method, start) = (req.method().clone(), Instant::now());
        // Every server is healthy while it answers at all.
        let health = method == hyper::Method::GET && req.uri().path() == "/healthz";
        let route = if health { "/healthz" } else { labels(&method, req.uri().path()) };
        let fut = if health { Either::Left(async { ok(&"ok") }) } else { Either::Right(h(req)) };
        let m = m.clone();
        async move {
            let mut resp = fut.await.unwrap_or_else(error_response);
            harden(resp.headers_mut());
            m.observe(method.as_str(), route, resp.status().as_u16(), start.elapsed().as_secs_f64());
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(WriteStall { io, stalled: None }, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
