//! The HTTP client every role uses: pooled HTTP/1 connections, a timeout per request, and a
//! bound on every reply it reads, so a misbehaving server can make it hold neither an
//! unbounded body nor a connection forever.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::proto::ErrorBody;
use crate::sys::pool::Buf;

pub type Body = Full<Bytes>;

/// Replies larger than this are refused unless a request says otherwise: enough for the
/// manifest of a file of several TB, and a bound on what a misbehaving server can make a
/// client hold.
const MAX_REPLY: usize = 256 << 20;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url}: the request failed: {reason}")]
    Failed { url: String, reason: String },
    #[error("{url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: the reply is over {limit} bytes")]
    TooLarge { url: String, limit: usize },
    /// The server answered with an error status; `message` is its sentence.
    #[error("{message}")]
    Status { url: String, status: StatusCode, message: String },
    #[error("{url}: unexpected reply: {reason}")]
    Decode { url: String, reason: String },
    #[error("`{url}` is not a usable URL: {reason}")]
    BadUrl { url: String, reason: String },
}

impl HttpError {
    /// What went wrong, in a few words and without the remote's own text: for reports about
    /// a peer that others may read (audit logs, admission answers).
    pub fn summary(&self) -> String {
        match self {
            HttpError::Connect { .. } => "connection refused or unreachable".into(),
            HttpError::Timeout { .. } => "no answer in time".into(),
            HttpError::TooLarge { .. } => "an answer too large".into(),
            HttpError::Status { status, .. } => format!("HTTP {status}"),
            HttpError::Decode { .. } => "an answer that does not parse".into(),
            _ => "the request failed".into(),
        }
    }

    /// The status the server answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The deepest cause of an error: for connection failures the one sentence worth showing
/// ("Connection refused (os error 111)") sits under several wrappers.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Whether a request failed because its connection closed before any reply (a server
/// closing an idle connection as the request went out on it).
fn closed_before_reply(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_incomplete_message()) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A pooled HTTP/1 client with per-request timeouts.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Body>,
    pub timeout: Duration,
}

/// What a request came back with.
#[derive(Debug)]
pub struct Reply {
    pub url: String,
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as `T` on success, else the server's error sentence.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, HttpError> {
        let ok = self.ok()?;
        serde_json::from_slice(&ok.body).map_err(|e| HttpError::Decode { url: ok.url, reason: e.to_string() })
    }

    /// The reply itself when its status is a success, else the server's error sentence.
    pub fn ok(self) -> Result<Reply, HttpError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let message = self.error_message();
        Err(HttpError::Status { url: self.url, status: self.status, message })
    }

    pub fn error_message(&self) -> String {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(e) => e.error,
            Err(_) => format!("HTTP {} from {}", self.status, self.url),
        }
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new(Duration::from_secs(30))
    }
}

impl Client {
    /// A client for `http://` and `https://` URLs; certificates are checked against the
    /// roots `net::tls` trusts when it is made.
    pub fn new(timeout: Duration) -> Client {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*super::tls::client_config()).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        // Idle connections are dropped before a server of ours closes them (its header
        // timeout, 10 s by default), so few requests are sent on a closing connection.
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(32)
            .pool_idle_timeout(Duration::from_secs(5))
            .build(https);
        Client { inner, timeout }
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Reply, HttpError> {
        self.send_limited(req, MAX_REPLY).await
    }

    /// Sends `req`; a reply body over `limit` bytes is an error, and is not read further.
    pub async fn send_limited(&self, req: Request<Body>, limit: usize) -> Result<Reply, HttpError> {
        let url = req.uri().to_string();
        // A pooled connection the server closed as it went idle fails the request sent on it
        // ("connection closed before message completed"): a GET goes once more, on a fresh
        // connection.
        let again = (req.method() == hyper::Method::GET).then(|| {
            let mut r = Request::new(req.body().clone());
            *r.uri_mut() = req.uri().clone();
            *r.headers_mut() = req.headers().clone();
            r
        });
        let fut = async {
            let first = self.inner.request(req).await;
            let resp = match (first, again) {
                (Err(e), Some(again)) if closed_before_reply(&e) => self.inner.request(again).await,
                (r, _) => r,
            };
            let resp = resp.map_err(|e| {
                let reason = root_cause(&e);
                match e.is_connect() {
                    true => HttpError::Connect { url: url.clone(), reason },
                    false => HttpError::Failed { url: url.clone(), reason },
                }
            })?;
            let status = resp.status();
            // Straight into one pooled buffer: shards are megabytes, fetched by the thousand.
            let declared: Option<usize> =
                resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
            if declared.is_some_and(|d| d > limit) {
                return Err(HttpError::TooLarge { url: url.clone(), limit });
            }
            let mut buf = Buf::with_capacity(declared.unwrap_or(0));
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| HttpError::Failed { url: url.clone(), reason: root_cause(&e) })?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(HttpError::TooLarge { url: url.clone(), limit });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Reply { url: url.clone(), status, body: buf.into_bytes() })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| HttpError::Timeout { url: url.clone(), after: self.timeout })?
    }

    /// GET with a bound on the reply, for peers that may send anything.
    pub async fn get_limited(&self, url: &str, limit: usize) -> Result<Reply, HttpError> {
        self.send_limited(request("GET", url, &[], Bytes::new())?, limit).await
    }

    pub async fn get(&self, url: &str) -> Result<Reply, HttpError> {
        self.send(request("GET", url, &[], Bytes::new())?).await
    }

    pub async fn post_json<T: Serialize>(&self, url: &str, value: &T) -> Result<Reply, HttpError> {
        let body = Bytes::from(serde_json::to_vec(value).expect("wire types serialize"));
        self.send(request("POST", url, &[("content-type", "application/json")], body)?).await
    }
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Result<Request<Body>, HttpError> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).map_err(|e| HttpError::BadUrl { url: url.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
        format!("http://{addr}/v2/shards/x")
    }

    #[tokio::test]
    async fn a_get_on_a_connection_closed_as_it_was_sent_goes_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        tokio::spawn(async move {
            // The first connection answers one request, then closes on the next one unanswered.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none").await.unwrap();
            let _ = s.read(&mut buf).await;
            drop(s);
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo").await.unwrap();
        });
        let c = Client::default();
        assert_eq!(&c.get(&url).await.unwrap().body[..], b"one");
        assert_eq!(&c.get(&url).await.unwrap().body[..], b"two");
    }

    #[tokio::test]
    async fn refused_connections_name_the_cause_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = Client::default().get(&format!("http://127.0.0.1:{port}/x")).await.unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
        assert!(e.to_string().ends_with("Connection refused (os error 111)"), "{e}");
    }

    #[tokio::test]
    async fn replies_over_the_limit_are_refused() {
        let c = Client::default();
        // Declared too long: refused before reading.
        let url = raw_server("HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n", 0).await;
        assert!(c.get_limited(&url, 1 << 20).await.unwrap_err().to_string().contains("over 1048576 bytes"));
        // Streamed without a length: cut off once past the limit.
        let url = raw_server("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", 32).await;
        assert!(c.get_limited(&url, 1 << 20).await.unwrap_err().to_string().contains("over 1048576 bytes"));
        assert_eq!(c.get_limited(&url, 2 << 20).await.unwrap().body.len(), 2 << 20);
    }
}
