//! HTTP plumbing shared by the roles: a server loop that is a value (spawn → handle with
//! address and shutdown), bounded body reading, JSON replies and errors, and a small client.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytes::BytesMut;
use futures::future::Either;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::pool::Buf;
use crate::proto::ErrorBody;

pub type Body = Full<Bytes>;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("data directory {dir}: {source}")]
    DataDir { dir: PathBuf, source: std::io::Error },
    #[error("database in {dir}: {source} (is another process using this data directory?)")]
    Db { dir: PathBuf, source: sled::Error },
}

/// The non-empty segments of a request's path, for matching routes.
pub fn path_segments<B>(req: &Request<B>) -> Vec<String> {
    req.uri().path().split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The query string as key → value (ids and numbers only: no percent-decoding needed).
pub fn query<B>(req: &Request<B>) -> std::collections::HashMap<String, String> {
    req.uri()
        .query()
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
    pub fn internal(m: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m.to_string())
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

fn error_response(e: ApiError) -> Response<Body> {
    json(e.status, &ErrorBody { error: e.message })
}

/// Reads a body of at most `limit` bytes; more is 413, without reading it all.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    read_frames(req, limit, |d| buf.extend_from_slice(d)).await?;
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
    let mut buf = Buf::with_capacity(declared_len(&req).unwrap_or(0).min(limit as u64) as usize);
    read_frames(req, limit, |d| {
        inspect(d);
        buf.extend_from_slice(d)
    })
    .await?;
    Ok(buf)
}

fn declared_len<B>(req: &Request<B>) -> Option<u64> {
    req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Bodies up to this size are drained before a 413 answer.
const DRAIN_LIMIT: u64 = 4 << 20;

/// Feeds the body's bytes to `push`, refusing (413) as soon as more than `limit` arrive.
async fn read_frames(req: Request<Incoming>, limit: usize, mut push: impl FnMut(&[u8])) -> Result<(), ApiError> {
    let too_big = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {limit} bytes"));
    if let Some(len) = declared_len(&req).filter(|l| *l > limit as u64) {
        // A body a little too large is read and dropped, so the client sees the 413 rather
        // than a reset connection; a huge one is not read at all.
        if len <= DRAIN_LIMIT {
            let _ = Limited::new(req.into_body(), DRAIN_LIMIT as usize).collect().await;
        }
        return Err(too_big());
    }
    let mut body = req.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
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

/// A running server: its address, and how to stop it.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, drops open connections, and waits until every task has ended.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Serves `handler` on `listener` until shutdown. `background` runs beside it (heartbeats,
/// workers) and is stopped with it.
pub fn serve<H, F>(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    handler: H,
    background: Vec<tokio::task::JoinHandle<()>>,
) -> ServerHandle
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = ApiResult> + Send + 'static,
{
    let addr = listener.local_addr().expect("bound listener has an address");
    let (tx, mut rx) = watch::channel(false);
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = rx.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let h = handler.clone();
                    let m = metrics.clone();
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (method, path, start) = (req.method().clone(), req.uri().path().to_owned(), Instant::now());
                            // Every server is healthy while it answers at all.
                            let fut = if method == hyper::Method::GET && path == "/healthz" {
                                Either::Left(async { ok(&"ok") })
                            } else {
                                Either::Right(h(req))
                            };
                            let m = m.clone();
                            async move {
                                let resp = fut.await.unwrap_or_else(error_response);
                                m.observe(method.as_str(), &path, resp.status().as_u16(), start.elapsed().as_secs_f64());
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        conns.shutdown().await;
        for b in background {
            b.abort();
            let _ = b.await;
        }
    });
    ServerHandle { addr, shutdown: tx, task }
}

/// Replies larger than this are refused unless a request says otherwise: enough for the
/// manifest of a file of several TB, and a bound on what a misbehaving server can make a
/// client hold.
const MAX_REPLY: usize = 256 << 20;

/// A pooled HTTP/1 client with per-request timeouts.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Body>,
    pub timeout: Duration,
}

/// What a request came back with.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as `T` on success, else the server's error sentence.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, String> {
        if !self.status.is_success() {
            return Err(self.error_message());
        }
        serde_json::from_slice(&self.body).map_err(|e| format!("unexpected reply: {e}"))
    }

    pub fn error_message(&self) -> String {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(e) => e.error,
            Err(_) => format!("HTTP {}", self.status),
        }
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new(Duration::from_secs(30))
    }
}

impl Client {
    pub fn new(timeout: Duration) -> Client {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let inner = HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(32).build(conn);
        Client { inner, timeout }
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Reply, String> {
        self.send_limited(req, MAX_REPLY).await
    }

    /// Sends `req`; a reply body over `limit` bytes is an error, and is not read further.
    pub async fn send_limited(&self, req: Request<Body>, limit: usize) -> Result<Reply, String> {
        let uri = req.uri().clone();
        let too_big = || format!("{uri}: the reply is over {limit} bytes");
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| format!("{uri}: {e}"))?;
            let status = resp.status();
            // Straight into one pooled buffer: shards are megabytes, fetched by the thousand.
            let declared: Option<usize> =
                resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
            if declared.is_some_and(|d| d > limit) {
                return Err(too_big());
            }
            let mut buf = Buf::with_capacity(declared.unwrap_or(0));
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(|e| format!("{uri}: {e}"))?.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(too_big());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Reply { status, body: buf.into_bytes() })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("{uri}: no answer within {:?}", self.timeout))?
    }

    /// GET with a bound on the reply, for peers that may send anything.
    pub async fn get_limited(&self, url: &str, limit: usize) -> Result<Reply, String> {
        self.send_limited(request("GET", url, &[], Bytes::new())?, limit).await
    }

    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.send(request("GET", url, &[], Bytes::new())?).await
    }

    pub async fn post_json<T: Serialize>(&self, url: &str, value: &T) -> Result<Reply, String> {
        let body = Bytes::from(serde_json::to_vec(value).expect("wire types serialize"));
        self.send(request("POST", url, &[("content-type", "application/json")], body)?).await
    }
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Request<Body>, String> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).map_err(|e| format!("bad request to {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every connection with `head` and then `chunks` chunks of 64 KiB
    /// (chunked encoding, so no length is declared up front), as a misbehaving peer might.
    async fn raw_server(head: &'static str, chunks: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    let _ = s.read(&mut req).await;
                    s.write_all(head.as_bytes()).await?;
                    for _ in 0..chunks {
                        s.write_all(format!("{:x}\r\n", 64 << 10).as_bytes()).await?;
                        s.write_all(&[7u8; 64 << 10]).await?;
                        s.write_all(b"\r\n").await?;
                    }
                    s.write_all(b"0\r\n\r\n").await
                });
            }
        });
        format!("http://{addr}/v1/shards/x")
    }

    #[tokio::test]
    async fn replies_over_the_limit_are_refused() {
        let c = Client::default();
        // Declared too long: refused before reading.
        let url = raw_server("HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n", 0).await;
        assert!(c.get_limited(&url, 1 << 20).await.unwrap_err().contains("over 1048576 bytes"));
        // Streamed without a length: cut off once past the limit.
        let url = raw_server("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", 32).await;
        assert!(c.get_limited(&url, 1 << 20).await.unwrap_err().contains("over 1048576 bytes"));
        assert_eq!(c.get_limited(&url, 2 << 20).await.unwrap().body.len(), 2 << 20);
    }
}
