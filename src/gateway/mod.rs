//! `p2pstore gateway`: an S3 endpoint on the user's own machine. Its one job is to translate
//! S3 requests (checked with AWS Signature V4 by `s3s`) into p2pstore uploads, range reads
//! and deletes made with the user's account and password, and to keep bucket names, object
//! keys and metadata in an encrypted namespace on the coordinator, so that nothing readable
//! leaves the machine and a gateway anywhere else with the same account and password sees
//! the same buckets.
//!
//! `s3.rs` implements the S3 operations; `namespace.rs` encrypts names and records.

mod namespace;
mod s3;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey, SimpleAuth};
use s3s::service::S3ServiceBuilder;
use s3s::{S3Result, s3_error};
use serde::{Deserialize, Serialize};

pub use namespace::NameKeys;
pub use s3::Gateway;

use crate::client::{Client, ClientError};
use crate::core::erasure::Shape;

/// Why the gateway could not start or serve a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A namespace entry that does not open: another password, or damage.
    #[error("{0} (is this the password the gateway was first used with?)")]
    Namespace(String),
    #[error(
        "this password does not open the account's buckets: use the password the account's gateway was first \
         started with"
    )]
    WrongPassword,
    #[error("the S3 credentials file {path}")]
    Credentials { path: PathBuf, source: std::io::Error },
    #[error("the S3 credentials file {path} is not valid: {reason}")]
    BadCredentials { path: PathBuf, reason: String },
    #[error("set both the S3 access key and the secret key, or neither (then a pair is generated)")]
    HalfCredentials,
    #[error("cannot listen on {addr}")]
    Bind { addr: String, source: std::io::Error },
}

/// The S3 credentials clients sign with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

/// How to reach the gateway, and who may.
pub struct GatewayOptions {
    pub host: String,
    pub port: u16,
    pub credentials: Credentials,
    /// Shards that rebuild a segment and shards per segment, for the files it stores.
    pub shape: Shape,
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = vec![0u8; len];
    SystemRandom::new().fill(&mut b).expect("the operating system's random generator failed");
    b.iter().map(|x| alphabet[*x as usize % alphabet.len()] as char).collect()
}

/// The configured credentials, or those kept in `data_dir/credentials.json`, made (and
/// returned with `true`: print them once) on first start.
pub fn credentials(
    access_key: Option<String>,
    secret_key: Option<String>,
    data_dir: &Path,
) -> Result<(Credentials, bool), GatewayError> {
    match (access_key, secret_key) {
        (Some(access_key), Some(secret_key)) => return Ok((Credentials { access_key, secret_key }, false)),
        (None, None) => {}
        _ => return Err(GatewayError::HalfCredentials),
    }
    let path = data_dir.join("credentials.json");
    let io = |source| GatewayError::Credentials { path: path.clone(), source };
    let fresh = !path.exists();
    let bytes = crate::sys::fs::read_or_create_secret(&path, || {
        let c = Credentials {
            access_key: random_string(20, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"),
            secret_key: random_string(40, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
        };
        Ok(serde_json::to_vec_pretty(&c).expect("serializes"))
    })
    .map_err(io)?;
    let c = serde_json::from_slice(&bytes)
        .map_err(|e| GatewayError::BadCredentials { path: path.clone(), reason: e.to_string() })?;
    Ok((c, fresh))
}

/// s3s's `SimpleAuth` answers an unknown access key with `NotSignedUp`; clients expect
/// `InvalidAccessKeyId`.
struct Auth(SimpleAuth);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0.lookup(access_key).cloned().ok_or_else(|| {
            s3_error!(InvalidAccessKeyId, "The AWS Access Key Id you provided does not exist in our records.")
        })
    }
}

/// Refuses what s3s takes from presigned URLs and S3 does not: an `X-Amz-Expires` over a
/// week, and an `X-Amz-Date` in the future (its URL would live until that date and a week
/// past it); and, as s3s does by default, any request not signed.
struct Access;

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        presigned_window(cx.uri().query().unwrap_or_default(), now)
    }
}

/// The longest life S3 gives a presigned URL, and how far ahead of the gateway's clock its
/// date may be.
const PRESIGNED_MAX: u64 = 7 * 86_400;
const CLOCK_AHEAD: u64 = 15 * 60;

/// Checks a presigned URL's `X-Amz-Expires` and `X-Amz-Date` (query `query`) against S3's
/// bounds at unix time `now`. Pure.
fn presigned_window(query: &str, now: u64) -> S3Result<()> {
    // Decoded, as s3s reads them (a percent-encoded name or value signs the same).
    let decode = |s: &str| urlencoding::decode(s).map(|d| d.into_owned()).unwrap_or_default();
    let pairs: Vec<(String, String)> =
        query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect();
    let param = |name: &str| -> S3Result<Option<&str>> {
        let mut found = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = found.next();
        match found.next() {
            Some(_) => Err(s3_error!(AuthorizationQueryParametersError, "{name} is given more than once")),
            None => Ok(first),
        }
    };
    if let Some(expires) = param("X-Amz-Expires")?
        && expires.parse::<u64>().is_ok_and(|e| e > PRESIGNED_MAX)
    {
        return Err(s3_error!(
            AuthorizationQueryParametersError,
            "X-Amz-Expires must be less than a week (in seconds) that is 604800"
        ));
    }
    if let Some(date) = param("X-Amz-Date")?.and_then(amz_date)
        && date > now + CLOCK_AHEAD
    {
        return Err(s3_error!(AccessDenied, "Request is not valid yet"));
    }
    Ok(())
}

/// Unix seconds of an ISO 8601 basic date-time, `YYYYMMDD'T'HHMMSS'Z'`.
fn amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u16>().ok();
    let month = time::Month::try_from(n(4..6)? as u8).ok()?;
    let date = time::Date::from_calendar_date(n(0..4)? as i32, month, n(6..8)? as u8).ok()?;
    let t = date.with_hms(n(9..11)? as u8, n(11..13)? as u8, n(13..15)? as u8).ok()?;
    u64::try_from(t.assume_utc().unix_timestamp()).ok()
}

/// The request with its body polled once already, so that hyper answers `Expect:
/// 100-continue` at once: botocore waits a second for it and then sends the body anyway, and
/// a `100 Continue` coming after that was parsed as the final answer's head, whose headers
/// were lost (aws-cli: `KeyError: 'ETag'` on a part uploaded under load).
async fn primed(req: hyper::Request<hyper::body::Incoming>) -> hyper::Request<s3s::Body> {
    use http_body_util::BodyExt;
    if !req.headers().contains_key(hyper::header::EXPECT) {
        return req.map(s3s::Body::from);
    }
    let (parts, mut rest) = req.into_parts();
    let first = match futures::poll!(rest.frame()) {
        std::task::Poll::Ready(frame) => frame,
        std::task::Poll::Pending => None,
    };
    hyper::Request::from_parts(parts, s3s::Body::http_body(Primed { first, rest }))
}

/// A body whose first frame was taken early.
struct Primed {
    first: Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>,
    rest: hyper::body::Incoming,
}

impl hyper::body::Body for Primed {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        if let Some(f) = self.first.take() {
            return std::task::Poll::Ready(Some(f));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let taken = match &self.first {
            Some(Ok(f)) => f.data_ref().map_or(0, |d| d.len() as u64),
            _ => 0,
        };
        let rest = self.rest.size_hint();
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(rest.lower() + taken);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + taken);
        }
        hint
    }
}

/// A bound gateway, ready to serve.
pub struct Bound {
    listener: tokio::net::TcpListener,
    service: s3s::service::S3Service,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves S3 until the process ends.
    pub async fn serve(self) {
        loop {
            let (sock, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let s3 = self.service.clone();
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let s3 = s3.clone();
                async move {
                    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                    let t0 = std::time::Instant::now();
                    let has_body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
                        || req.headers().contains_key(hyper::header::EXPECT)
                        || hyper::body::Body::size_hint(req.body()).lower() > 0;
                    let mut resp = s3.call(primed(req).await).await;
                    // A refusal may come before the body was read, or instead of a `100
                    // Continue`: botocore then sent its next request on a connection in a state
                    // of its own (a bare 400 for a good PUT), so the connection ends with it.
                    if let Ok(r) = &mut resp
                        && has_body
                        && (r.status().is_client_error() || r.status().is_server_error())
                    {
                        r.headers_mut()
                            .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
                    }
                    if let Ok(r) = &resp {
                        let ms = t0.elapsed().as_millis() as u64;
                        tracing::info!(%peer, %method, %path, status = r.status().as_u16(), ms, "s3");
                    }
                    resp
                }
            });
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(sock), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
    }
}

/// Derives the namespace keys (0.1 s), checks the coordinator answers, and binds.
pub async fn bind(client: Client, password: &[u8], opts: GatewayOptions) -> Result<Bound, GatewayError> {
    client.account().await?;
    let (pw, account) = (password.to_vec(), client.account_id());
    let keys = tokio::task::spawn_blocking(move || NameKeys::derive(&pw, &account))
        .await
        .map_err(|e| GatewayError::Client(e.into()))?;
    // A namespace written with another password would answer every request with an error:
    // refuse to start instead.
    let (first, _) = client.name_list("b/", "", 1, false).await?;
    if let Some((key, value)) = first.first() {
        keys.open_record::<serde_json::Value>(key, value).map_err(|_| GatewayError::WrongPassword)?;
    }
    let backend = Gateway::new(client, keys, opts.shape);
    let mut b = S3ServiceBuilder::new(backend);
    b.set_auth(Auth(SimpleAuth::from_single(
        opts.credentials.access_key.clone(),
        opts.credentials.secret_key.as_str(),
    )));
    b.set_access(Access);
    let service = b.build();
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| GatewayError::Bind { addr: addr.clone(), source })?;
    Ok(Bound { listener, service })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_live_a_week_at_most_and_not_from_the_future() {
        let now = amz_date("20261126T120000Z").unwrap();
        assert_eq!(now, 1_795_694_400);
        let q = |date: &str, expires: u64| {
            format!("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={date}&X-Amz-Expires={expires}")
        };
        assert!(presigned_window(&q("20261126T120000Z", 604_800), now).is_ok());
        assert!(presigned_window(&q("20261126T120000Z", 604_801), now).is_err());
        assert!(presigned_window(&q("20261126T121400Z", 60), now).is_ok(), "a clock a little ahead");
        assert!(presigned_window(&q("20261129T120000Z", 60), now).is_err(), "three days ahead");
        assert!(presigned_window("list-type=2&prefix=a", now).is_ok(), "not presigned");
        // Spelt otherwise, or twice (round 6 of the attacks: a URL good for ten years).
        assert!(presigned_window("X-Amz-Expires=%36%30%34%38%30%31", now).is_err());
        assert!(presigned_window("X-Amz-%45xpires=604801", now).is_err());
        assert!(presigned_window("X-Amz-Expires=%2B604801", now).is_err());
        assert!(presigned_window("X-Amz-Expires=60&X-Amz-Expires=604801", now).is_err());
        assert_eq!(amz_date("2026-11-26T12:00:00Z"), None);
    }
}
