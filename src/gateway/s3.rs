//! `impl s3s::S3`: each S3 operation in terms of p2pstore files and the encrypted namespace.
//! s3s parses requests, checks signatures and writes responses; what it leaves to a backend
//! is here: ETags, Content-MD5 and `x-amz-checksum-*` checks, ranges, conditional requests,
//! listing with prefixes, delimiters and paging, and multipart bookkeeping.
//!
//! An object is an ordered list of parts, each a p2pstore file encrypted with a random key
//! of its own; a single PUT is one part, a multipart upload one part per uploaded
//! part (stored as it arrives). Bodies stream through the encoder and the range reader a few
//! segments at a time, never whole.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::HeaderMap;
use ring::rand::{SecureRandom, SystemRandom};
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, TrailingHeaders, s3_error};
use serde::{Deserialize, Serialize};

use super::GatewayError;
use super::namespace::NameKeys;
use crate::client::{Client, ClientError, RangeReader};
use crate::core::codec::EncodeParams;
use crate::core::crypto::{MIN_ITERATIONS, SALT_LEN, Salt, Secret};
use crate::core::manifest::{FileId, FileMeta, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};

const MIN_PART_SIZE: u64 = 5 << 20;
const MAX_PARTS: i32 = 10_000;
/// Plaintext bytes of a full segment of a gateway file: 8 MiB, so the 8 MiB parts and ranges
/// S3 tools use by default map onto whole segments.
const SEGMENT_PLAIN: u64 = 8 << 20;
const TAG_LEN: u64 = 16;
/// Namespace entries asked for per page.
const PAGE: u32 = 1000;
/// Parts or objects deleted from the network at once.
const DELETE_CONCURRENCY: usize = 8;

/// One p2pstore file holding a piece of an object.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct PartRef {
    /// The file id (hex).
    pub file: String,
    /// The random password of a file written before parts had random keys (hex of 32 random
    /// bytes); empty since, and still written: gateways of before read records with it.
    #[serde(default)]
    pub password: String,
    /// The file's salt and key (hex, 16 + 32 bytes): a random key since parts have them
    /// ([`Secret::random_key`]: no PBKDF2, which cost 17 ms a part, 2 CPU-s a GiB), before
    /// that the key PBKDF2 made of the password. Absent in the oldest records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub size: u64,
}

/// Without the password and the key: records are printed in logs and test failures.
impl std::fmt::Debug for PartRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartRef").field("file", &self.file).field("size", &self.size).finish_non_exhaustive()
    }
}

impl PartRef {
    /// What opens the part's file: the stretched key when the record has it.
    fn secret(&self) -> Secret {
        let stretched = self.key.as_deref().and_then(|k| hex::decode(k).ok()).and_then(|b| {
            let salt = Salt(b.get(..SALT_LEN)?.try_into().ok()?);
            Some(Secret::Stretched { salt, key: b.get(SALT_LEN..)?.try_into().ok()? })
        });
        stretched.unwrap_or_else(|| Secret::Password(self.password.clone().into_bytes()))
    }
}

/// `secret`'s salt and key in hex, as [`PartRef::key`] keeps them.
fn stretched_hex(secret: &Secret) -> Option<String> {
    match secret {
        Secret::Stretched { salt, key } => Some(format!("{}{}", salt.to_hex(), hex::encode(key))),
        Secret::Password(_) => None,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BucketRecord {
    name: String,
    created: u64,
}

/// What the namespace keeps of an object (sealed).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ObjectRecord {
    size: u64,
    /// Unquoted: hex MD5, or `<hex md5 of the parts' md5s>-<N>` for a multipart upload.
    etag: String,
    modified: u64,
    #[serde(default)]
    headers: StoredHeaders,
    parts: Vec<PartRef>,
    #[serde(default)]
    parts_count: Option<i32>,
}

/// The headers an object keeps: Content-Type and friends and user metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StoredHeaders {
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    cache_control: Option<String>,
    metadata: Option<HashMap<String, String>>,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    initiated: u64,
    headers: StoredHeaders,
}

/// One uploaded part of a multipart upload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PartRecord {
    /// None for an empty part.
    file: Option<PartRef>,
    size: u64,
    md5: String,
    modified: u64,
}

/// The S3 backend: a p2pstore client acting for one account, and the keys of its namespace.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

pub struct Inner {
    client: Client,
    keys: NameKeys,
    shape: crate::core::erasure::Shape,
    /// Files opened for reading lately: S3 tools read an object in many ranged GETs, and
    /// opening costs a manifest, the placements and a key derivation.
    readers: std::sync::Mutex<HashMap<String, (std::time::Instant, Arc<RangeReader>)>>,
    /// Requests on one object, or one multipart upload, take turns: two PUTs of one key each
    /// read the record they replace (one's files were never deleted), and a Complete racing
    /// an Abort listed an object whose parts were gone.
    turns: Turns,
    listings: Listings,
}

/// Directories as a listing's first page read them, for the pages after it. Encrypted names
/// do not sort as their plaintext, so every page needs the whole directory: read again for
/// each page, 100,000 keys listed 1,000 at a time cost 100 readings of all of them (round 3
/// of the attacks). A page without a continuation token reads afresh; later pages take the
/// directory as read for the first (at most [`LISTING_KEPT`] old) with this gateway's own
/// writes since applied, as S3 pages are taken as a listing proceeds.
#[derive(Default)]
struct Listings(std::sync::Mutex<VecDeque<Listed>>);

struct Listed {
    /// The encrypted directory, as listed on the coordinator.
    dir: String,
    read: std::time::Instant,
    objects: Arc<BTreeMap<String, ObjectRecord>>,
}

/// How long a directory read for one page serves the pages after it.
const LISTING_KEPT: Duration = Duration::from_secs(60);
/// Objects kept in all directories together at most (about 300 bytes each), and directories.
const LISTED_OBJECTS: usize = 1 << 20;
const LISTED_DIRS: usize = 16;

impl Listings {
    fn get(&self, dir: &str) -> Option<Arc<BTreeMap<String, ObjectRecord>>> {
        let kept = self.0.lock().expect("not poisoned");
        kept.iter().find(|l| l.dir == dir && l.read.elapsed() < LISTING_KEPT).map(|l| l.objects.clone())
    }

    fn keep(&self, dir: String, objects: Arc<BTreeMap<String, ObjectRecord>>) {
        let mut kept = self.0.lock().expect("not poisoned");
        kept.retain(|l| l.dir != dir && l.read.elapsed() < LISTING_KEPT);
        kept.push_back(Listed { dir, read: std::time::Instant::now(), objects });
        while kept.len() > LISTED_DIRS || kept.iter().map(|l| l.objects.len()).sum::<usize>() > LISTED_OBJECTS {
            kept.pop_front();
        }
    }

    /// Applies a write of this gateway (`rec` None: a deletion) of `key` to the kept
    /// directories that hold it (`dirs`: the encrypted directories above it).
    fn apply(&self, dirs: &[String], key: &str, rec: Option<&ObjectRecord>) {
        let mut kept = self.0.lock().expect("not poisoned");
        for l in kept.iter_mut().filter(|l| dirs.contains(&l.dir)) {
            let objects = Arc::make_mut(&mut l.objects);
            match rec {
                Some(r) => objects.insert(key.to_owned(), r.clone()),
                None => objects.remove(key),
            };
        }
    }
}

/// Async locks by name, forgotten when nobody holds or waits for them.
#[derive(Default)]
struct Turns(std::sync::Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>);

impl Turns {
    async fn take(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().expect("not poisoned");
            if map.len() >= 1024 {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(name).and_then(std::sync::Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(name.to_owned(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// How long an opened file is reused (its read grants last an hour; placements may move).
const READER_TTL: Duration = Duration::from_secs(60);
/// Opened files kept at most.
const READERS_KEPT: usize = 64;

impl std::ops::Deref for Gateway {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn ts(secs: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_secs(secs))
}

fn strong(v: &str) -> ETag {
    ETag::Strong(v.to_owned())
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).expect("the operating system's random generator failed");
    hex::encode(b)
}

/// A failure of the network or the namespace, as an S3 error.
fn s3_err(e: GatewayError) -> S3Error {
    let status = match &e {
        GatewayError::Client(c) => c.status(),
        _ => None,
    };
    let mut err = match status.map(|s| s.as_u16()) {
        Some(429) => S3Error::with_message(S3ErrorCode::SlowDown, e.to_string()),
        Some(503) => S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string()),
        Some(403) => S3Error::with_message(S3ErrorCode::AccessDenied, e.to_string()),
        _ => S3Error::with_message(S3ErrorCode::InternalError, e.to_string()),
    };
    tracing::warn!(error = %crate::net::server::error_chain(&e), "gateway request failed");
    err.set_source(Box::new(e));
    err
}

fn client_err(e: ClientError) -> S3Error {
    s3_err(GatewayError::Client(e))
}

/// An error of the request body stream. The concrete types live in private s3s modules, so
/// they are told apart by their text.
fn body_error(e: &(dyn std::error::Error + Send + Sync)) -> S3Error {
    let msg = e.to_string();
    if msg.contains("SignatureMismatch") {
        s3_error!(SignatureDoesNotMatch, "chunk signature mismatch")
    } else if msg.contains("Sha256Mismatch") {
        let mut e = S3Error::with_message(
            S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
        e.set_status_code(http::StatusCode::BAD_REQUEST);
        e
    } else {
        s3_error!(IncompleteBody, "error reading the request body: {msg}")
    }
}

/// The checksums the client announced (headers, `x-amz-sdk-checksum-algorithm`, or a
/// trailer), each with a hasher to compute it.
fn make_hasher(given: &Checksum, alg: Option<&ChecksumAlgorithm>, headers: &HeaderMap) -> S3Result<ChecksumHasher> {
    let mut h = ChecksumHasher::default();
    let mut enable = |name: &str| -> S3Result<()> {
        match name.to_ascii_uppercase().as_str() {
            ChecksumAlgorithm::CRC32 => h.crc32 = Some(Default::default()),
            ChecksumAlgorithm::CRC32C => h.crc32c = Some(Default::default()),
            ChecksumAlgorithm::SHA1 => h.sha1 = Some(Default::default()),
            ChecksumAlgorithm::SHA256 => h.sha256 = Some(Default::default()),
            ChecksumAlgorithm::CRC64NVME => h.crc64nvme = Some(Default::default()),
            other => return Err(s3_error!(InvalidArgument, "unsupported checksum algorithm {other}")),
        }
        Ok(())
    };
    for (set, name) in [
        (given.checksum_crc32.is_some(), "CRC32"),
        (given.checksum_crc32c.is_some(), "CRC32C"),
        (given.checksum_sha1.is_some(), "SHA1"),
        (given.checksum_sha256.is_some(), "SHA256"),
        (given.checksum_crc64nvme.is_some(), "CRC64NVME"),
    ] {
        if set {
            enable(name)?;
        }
    }
    if let Some(alg) = alg {
        enable(alg.as_str())?;
    }
    if let Some(t) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
        for name in t.split(',') {
            if let Some(a) = name.trim().strip_prefix("x-amz-checksum-") {
                enable(a)?;
            }
        }
    }
    Ok(h)
}

/// Compares the computed checksums with those sent as headers or as aws-chunked trailers
/// (readable only once the body was consumed).
fn verify_checksums(computed: &Checksum, mut given: Checksum, trailers: Option<&TrailingHeaders>) -> S3Result<()> {
    if let Some(t) = trailers.and_then(TrailingHeaders::take) {
        let get = |n: &str| t.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        given.checksum_crc32 = given.checksum_crc32.or_else(|| get("x-amz-checksum-crc32"));
        given.checksum_crc32c = given.checksum_crc32c.or_else(|| get("x-amz-checksum-crc32c"));
        given.checksum_sha1 = given.checksum_sha1.or_else(|| get("x-amz-checksum-sha1"));
        given.checksum_sha256 = given.checksum_sha256.or_else(|| get("x-amz-checksum-sha256"));
        given.checksum_crc64nvme = given.checksum_crc64nvme.or_else(|| get("x-amz-checksum-crc64nvme"));
    }
    let pairs = [
        ("crc32", &given.checksum_crc32, &computed.checksum_crc32),
        ("crc32c", &given.checksum_crc32c, &computed.checksum_crc32c),
        ("sha1", &given.checksum_sha1, &computed.checksum_sha1),
        ("sha256", &given.checksum_sha256, &computed.checksum_sha256),
        ("crc64nvme", &given.checksum_crc64nvme, &computed.checksum_crc64nvme),
    ];
    for (name, g, c) in pairs {
        if let Some(g) = g
            && Some(g) != c.as_ref()
        {
            return Err(s3_error!(BadDigest, "x-amz-checksum-{name} does not match the body"));
        }
    }
    Ok(())
}

/// What a body must match: its declared length, Content-MD5 and checksums.
struct BodyChecks {
    size: u64,
    content_md5: Option<String>,
    hasher: ChecksumHasher,
    given: Checksum,
    trailers: Option<TrailingHeaders>,
}

/// The checksums a PutObject or UploadPart input announces (their types differ, their
/// fields do not).
macro_rules! announced_checksums {
    ($input:expr) => {
        Checksum {
            checksum_crc32: $input.checksum_crc32,
            checksum_crc32c: $input.checksum_crc32c,
            checksum_sha1: $input.checksum_sha1,
            checksum_sha256: $input.checksum_sha256,
            checksum_crc64nvme: $input.checksum_crc64nvme,
            checksum_type: None,
        }
    };
}

impl BodyChecks {
    /// The checks of a request's body: `given` checksums (and the algorithm announced for a
    /// trailer), Content-MD5, and its length.
    fn new(
        size: u64,
        content_md5: Option<String>,
        given: &Checksum,
        alg: Option<&ChecksumAlgorithm>,
        headers: &HeaderMap,
        trailers: Option<TrailingHeaders>,
    ) -> S3Result<BodyChecks> {
        Ok(BodyChecks { size, content_md5, hasher: make_hasher(given, alg, headers)?, given: given.clone(), trailers })
    }

    fn plain(size: u64) -> BodyChecks {
        BodyChecks {
            size,
            content_md5: None,
            hasher: ChecksumHasher::default(),
            given: Checksum::default(),
            trailers: None,
        }
    }

    fn expected_md5(&self) -> S3Result<Option<Vec<u8>>> {
        let Some(b64) = &self.content_md5 else { return Ok(None) };
        let want = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not valid base64"))?;
        if want.len() != 16 {
            return Err(s3_error!(InvalidDigest, "Content-MD5 is not 16 bytes"));
        }
        Ok(Some(want))
    }
}

/// The blocking side of a body on its way into the encoder: chunks from the request, an
/// error (which stops the upload before its commit), or the end, sent only once every
/// check of the body passed.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.cur.is_empty() {
                let n = buf.len().min(self.cur.len());
                buf[..n].copy_from_slice(&self.cur[..n]);
                let _ = self.cur.split_to(n);
                return Ok(n);
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
    }
}

/// A response body fed by a task.
struct RxStream(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl Stream for RxStream {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The segment size of a gateway file of `size` bytes: one segment for up to 8 MiB, else
/// segments of 8 MiB of plaintext.
fn segment_size(size: u64) -> u32 {
    let sealed = size.min(SEGMENT_PLAIN) + TAG_LEN;
    (sealed as u32).clamp(MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE)
}

/// encoding-type=url: keys and prefixes in listings are URL-encoded (aws-cli, boto3 and
/// rclone ask for it and decode them).
fn enc(s: String, url: bool) -> String {
    if url { urlencoding::encode(&s).into_owned() } else { s }
}

fn b64url(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn un_b64url(s: &str) -> S3Result<String> {
    let bad = || s3_error!(InvalidArgument, "The continuation token provided is incorrect");
    let v = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    String::from_utf8(v).map_err(|_| bad())
}

/// Conditional GET/HEAD (If-Match, If-None-Match, If-(Un)Modified-Since), in RFC 9110 order.
fn check_conditions(
    obj: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let etag = strong(&obj.etag);
    let mtime = obj.modified as i64;
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    if let Some(c) = if_match {
        let ok = match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(e) => e.strong_cmp(&etag),
        };
        if !ok {
            return Err(s3_error!(PreconditionFailed, "If-Match does not match"));
        }
    } else if let Some(t) = if_unmodified_since
        && mtime > secs(t)
    {
        return Err(s3_error!(PreconditionFailed, "modified since If-Unmodified-Since"));
    }
    if let Some(c) = if_none_match {
        let matched = match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(e) => e.weak_cmp(&etag),
        };
        if matched {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since
        && mtime <= secs(t)
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

enum Entry {
    Obj(Box<Object>),
    Prefix(String),
}

struct Listing {
    entries: Vec<Entry>,
    truncated: bool,
    /// The key or common prefix returned last: where the next page resumes.
    last: Option<String>,
}

/// One page of a listing of `objects` (all keys starting with `prefix`, sorted).
fn list_page(
    objects: &BTreeMap<String, ObjectRecord>,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max_keys: usize,
) -> Listing {
    let mut entries = Vec::new();
    let mut last: Option<String> = None;
    let mut truncated = false;
    let lower = match after {
        Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_owned()),
        _ => std::ops::Bound::Included(prefix.to_owned()),
    };
    for (key, obj) in objects.range::<String, _>((lower, std::ops::Bound::Unbounded)) {
        if !key.starts_with(prefix) {
            break;
        }
        let cp = delimiter
            .filter(|d| !d.is_empty())
            .and_then(|d| key[prefix.len()..].find(d).map(|i| key[..prefix.len() + i + d.len()].to_owned()));
        if let Some(cp) = &cp
            && (after.is_some_and(|a| cp.as_str() <= a) || last.as_deref() == Some(cp.as_str()))
        {
            continue; // returned already
        }
        if entries.len() == max_keys {
            truncated = true;
            break;
        }
        match cp {
            Some(cp) => {
                last = Some(cp.clone());
                entries.push(Entry::Prefix(cp));
            }
            None => {
                last = Some(key.clone());
                entries.push(Entry::Obj(Box::new(Object {
                    key: Some(key.clone()),
                    e_tag: Some(strong(&obj.etag)),
                    last_modified: Some(ts(obj.modified)),
                    size: Some(obj.size as i64),
                    storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
                    ..Default::default()
                })));
            }
        }
    }
    Listing { entries, truncated, last }
}

/// S3's bound on a key: 1,024 bytes of UTF-8.
fn check_key(key: &str) -> S3Result<()> {
    if key.len() > 1024 {
        return Err(s3_error!(KeyTooLongError, "a key is at most 1,024 bytes; this one has {}", key.len()));
    }
    Ok(())
}

fn check_upload_id(id: &str) -> S3Result<()> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(s3_error!(NoSuchUpload, "no upload {id}"))
    }
}

impl Gateway {
    pub fn new(client: Client, keys: NameKeys, shape: crate::core::erasure::Shape) -> Gateway {
        Gateway(Arc::new(Inner {
            client,
            keys,
            shape,
            readers: std::sync::Mutex::new(HashMap::new()),
            turns: Turns::default(),
            listings: Listings::default(),
        }))
    }

    fn bucket_token(&self, bucket: &str) -> String {
        self.keys.seal_component("b", bucket)
    }

    fn bucket_key(&self, bucket: &str) -> String {
        format!("b/{}", self.bucket_token(bucket))
    }

    fn objects_prefix(&self, bucket: &str) -> String {
        format!("o/{}/", self.bucket_token(bucket))
    }

    fn object_key(&self, bucket: &str, key: &str) -> String {
        self.keys.seal_path(&self.objects_prefix(bucket), key)
    }

    fn uploads_prefix(&self, bucket: &str) -> String {
        format!("u/{}/", self.bucket_token(bucket))
    }

    fn part_key(upload_id: &str, n: i32) -> String {
        format!("p/{upload_id}/{n:05}")
    }

    async fn get_record<T: serde::de::DeserializeOwned>(&self, key: &str) -> S3Result<Option<T>> {
        match self.client.name_get(key).await.map_err(client_err)? {
            Some(v) => Ok(Some(self.keys.open_record(key, &v).map_err(s3_err)?)),
            None => Ok(None),
        }
    }

    async fn put_record<T: Serialize>(&self, key: &str, record: &T, if_absent: bool) -> Result<bool, ClientError> {
        self.client.name_put(key, &self.keys.seal_record(key, record), if_absent).await
    }

    /// Every entry under `prefix` (all pages), records opened.
    async fn list_all<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> S3Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (page, more) = self.client.name_list(prefix, &after, PAGE, false).await.map_err(client_err)?;
            for (k, v) in &page {
                out.push((k.clone(), self.keys.open_record(k, v).map_err(s3_err)?));
            }
            match page.last() {
                Some((k, _)) if more => after = k.clone(),
                _ => return Ok(out),
            }
        }
    }

    async fn require_bucket(&self, bucket: &str) -> S3Result<BucketRecord> {
        self.get_record(&self.bucket_key(bucket)).await?.ok_or_else(|| s3_error!(NoSuchBucket, "no bucket {bucket}"))
    }

    async fn get_object_record(&self, bucket: &str, key: &str) -> S3Result<ObjectRecord> {
        match self.get_record(&self.object_key(bucket, key)).await? {
            Some(r) => Ok(r),
            None => {
                self.require_bucket(bucket).await?;
                Err(s3_error!(NoSuchKey, "no key {key}"))
            }
        }
    }

    /// The encrypted directory `path` (a key's part up to its last `/`, or "" for the
    /// bucket's top) of `bucket`.
    fn sealed_dir(&self, bucket: &str, path: &str) -> String {
        let root = self.objects_prefix(bucket);
        match path.rfind('/') {
            Some(i) => format!("{}/", self.keys.seal_path(&root, &path[..i])),
            None => root,
        }
    }

    /// The objects of `bucket` in the directory `prefix` ends in (with keys outside `prefix`:
    /// [`list_page`] skips them), by key, as the coordinator lists them; for a later page of
    /// a listing (`continued`), as the first page read them ([`Listings`]).
    async fn list_objects_under(
        &self,
        bucket: &str,
        prefix: &str,
        continued: bool,
    ) -> S3Result<Arc<BTreeMap<String, ObjectRecord>>> {
        let dir = self.sealed_dir(bucket, prefix);
        self.require_bucket(bucket).await?;
        if continued && let Some(objects) = self.listings.get(&dir) {
            return Ok(objects);
        }
        let root = self.objects_prefix(bucket);
        let mut out = BTreeMap::new();
        for (k, rec) in self.list_all::<ObjectRecord>(&dir).await? {
            out.insert(self.keys.open_path(&root, &k).map_err(s3_err)?, rec);
        }
        let out = Arc::new(out);
        self.listings.keep(dir, out.clone());
        Ok(out)
    }

    /// Tells the kept listings of a write of this gateway (`rec` None: a deletion).
    fn listed_change(&self, bucket: &str, key: &str, rec: Option<&ObjectRecord>) {
        let dirs: Vec<String> = key
            .match_indices('/')
            .map(|(i, _)| self.sealed_dir(bucket, &key[..=i]))
            .chain([self.sealed_dir(bucket, "")])
            .collect();
        self.listings.apply(&dirs, key, rec);
    }

    /// Streams `body` into a new p2pstore file (none for an empty body), checking its
    /// length, Content-MD5 and checksums before the file is committed. The body's MD5.
    async fn store(
        &self,
        body: Option<StreamingBlob>,
        mut checks: BodyChecks,
    ) -> S3Result<(Option<PartRef>, [u8; 16])> {
        let size = checks.size;
        let expected_md5 = checks.expected_md5()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let upload = (size > 0).then(|| {
            let client = self.client.clone();
            let params =
                EncodeParams { shape: self.shape, segment_size: segment_size(size), iterations: MIN_ITERATIONS };
            let meta = FileMeta { name: String::new(), content_type: String::new() };
            tokio::spawn(async move {
                let secret = Secret::random_key();
                let reader = ChannelReader { rx, cur: Bytes::new() };
                let id = client.upload_reader(reader, size, meta, secret.clone(), params, None).await?;
                Ok::<_, ClientError>((id, secret))
            })
        });
        let fail = |e: S3Error| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Err(std::io::Error::other("the request body was refused"))).await;
                e
            }
        };
        let mut md5 = Md5::new();
        let mut got = 0u64;
        // Whether the upload failed before the body ended: then its error is the answer (a
        // digest of part of the body would say BadDigest instead).
        let mut cut_short = false;
        let mut body = body.unwrap_or_else(|| StreamingBlob::from(s3s::Body::empty()));
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Err(fail(body_error(&*e)).await),
            };
            got += chunk.len() as u64;
            if got > size {
                return Err(fail(s3_error!(IncompleteBody, "the body is longer than its Content-Length")).await);
            }
            md5.update(&chunk);
            checks.hasher.update(&chunk);
            if upload.is_some() && tx.send(Ok(chunk)).await.is_err() {
                cut_short = true;
                break;
            }
        }
        let digest: [u8; 16] = md5.finalize();
        let verdict = if cut_short && got < size {
            Ok(()) // the upload's own error is the answer, below
        } else if got != size {
            Err(s3_error!(IncompleteBody, "the body is shorter than its Content-Length"))
        } else if expected_md5.is_some_and(|m| m != digest) {
            Err(s3_error!(BadDigest, "The Content-MD5 you specified did not match what we received."))
        } else {
            verify_checksums(&checks.hasher.finalize(), checks.given, checks.trailers.as_ref())
        };
        if let Err(e) = verdict {
            return Err(fail(e).await);
        }
        drop(tx); // the end of the body: the encoder finishes and the upload commits
        let Some(upload) = upload else { return Ok((None, digest)) };
        let (id, secret) = upload.await.map_err(|e| client_err(e.into()))?.map_err(client_err)?;
        Ok((Some(PartRef { file: id.to_string(), password: String::new(), key: stretched_hex(&secret), size }), digest))
    }

    /// Deletes the files of parts no record names any more (best effort: a failure is
    /// logged, and the file stays until the account deletes it).
    async fn delete_files(&self, parts: Vec<PartRef>) {
        self.forget_readers(&parts);
        futures::stream::iter(parts)
            .for_each_concurrent(DELETE_CONCURRENCY, |p| async move {
                let r = match FileId::parse(&p.file) {
                    Ok(id) => self.client.remove(&id, p.secret()).await,
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = r {
                    tracing::warn!(file = %p.file, error = %crate::net::server::error_chain(&e), "could not delete a file");
                }
            })
            .await;
    }

    /// `part`'s file opened for range reads, reused for a minute.
    async fn reader(&self, part: &PartRef) -> Result<Arc<RangeReader>, ClientError> {
        let fresh = |(t, _): &(std::time::Instant, Arc<RangeReader>)| t.elapsed() < READER_TTL;
        if let Some((_, r)) = self.readers.lock().expect("not poisoned").get(&part.file).filter(|e| fresh(e)) {
            return Ok(r.clone());
        }
        let id = FileId::parse(&part.file)?;
        let r = Arc::new(self.client.open_ranges(&id, part.secret()).await?);
        let mut readers = self.readers.lock().expect("not poisoned");
        readers.retain(|_, e| fresh(e));
        if readers.len() >= READERS_KEPT {
            readers.clear();
        }
        readers.insert(part.file.clone(), (std::time::Instant::now(), r.clone()));
        Ok(r)
    }

    /// Forgets opened files (after their object was deleted or replaced).
    fn forget_readers(&self, parts: &[PartRef]) {
        let mut readers = self.readers.lock().expect("not poisoned");
        for p in parts {
            readers.remove(&p.file);
        }
    }

    /// The plaintext of `range` of an object made of `parts`, streamed: only the segments
    /// covering the range are fetched, a few ahead.
    fn read_stream(&self, parts: Vec<PartRef>, range: Range<u64>) -> StreamingBlob {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
        let this = self.clone();
        tokio::spawn(async move {
            let mut offset = 0u64;
            for p in parts {
                let (start, end) = (offset, offset + p.size);
                offset = end;
                if end <= range.start || start >= range.end {
                    continue;
                }
                let (from, to) = (range.start.max(start) - start, range.end.min(end) - start);
                let reader = match this.reader(&p).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(file = %p.file, error = %crate::net::server::error_chain(&e), "read failed");
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let mut chunks = reader.stream(from..to);
                while let Some(c) = chunks.recv().await {
                    let failed = c.is_err();
                    let c = c.map_err(|e| {
                        tracing::warn!(file = %p.file, error = %crate::net::server::error_chain(&e), "read failed");
                        std::io::Error::other(e.to_string())
                    });
                    if tx.send(c).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        StreamingBlob::wrap(RxStream(rx))
    }

    /// Every part record of an upload, by part number.
    async fn upload_parts(&self, upload_id: &str) -> S3Result<BTreeMap<i32, PartRecord>> {
        let mut out = BTreeMap::new();
        for (k, rec) in self.list_all::<PartRecord>(&format!("p/{upload_id}/")).await? {
            if let Some(n) = k.rsplit('/').next().and_then(|n| n.parse().ok()) {
                out.insert(n, rec);
            }
        }
        Ok(out)
    }

    async fn get_upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<UploadRecord> {
        check_upload_id(upload_id)?;
        let rec: UploadRecord = self
            .get_record(&format!("{}{upload_id}", self.uploads_prefix(bucket)))
            .await?
            .ok_or_else(|| s3_error!(NoSuchUpload, "no upload {upload_id}"))?;
        if rec.key != key {
            return Err(s3_error!(NoSuchUpload, "upload {upload_id} is not for this key"));
        }
        Ok(rec)
    }

    async fn delete_names(&self, keys: Vec<String>) -> S3Result<()> {
        for chunk in keys.chunks(PAGE as usize) {
            self.client.name_delete(chunk).await.map_err(client_err)?;
        }
        Ok(())
    }

    /// Writes an object's record, then deletes the files of the record it replaced.
    async fn write_object(&self, bucket: &str, key: &str, rec: &ObjectRecord) -> S3Result<()> {
        let name = self.object_key(bucket, key);
        let _turn = self.turns.take(&name).await;
        let old: Option<ObjectRecord> = self.get_record(&name).await.unwrap_or(None);
        self.put_record(&name, rec, false).await.map_err(client_err)?;
        self.listed_change(bucket, key, Some(rec));
        if let Some(old) = old {
            let keep: std::collections::HashSet<&str> = rec.parts.iter().map(|p| p.file.as_str()).collect();
            self.delete_files(old.parts.into_iter().filter(|p| !keep.contains(p.file.as_str())).collect()).await;
        }
        Ok(())
    }

    async fn remove_object(&self, bucket: &str, key: &str) -> S3Result<()> {
        let name = self.object_key(bucket, key);
        let _turn = self.turns.take(&name).await;
        if let Some(old) = self.get_record::<ObjectRecord>(&name).await? {
            self.client.name_delete(&[name]).await.map_err(client_err)?;
            self.listed_change(bucket, key, None);
            self.delete_files(old.parts).await;
        }
        Ok(())
    }
}

fn headers_of(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    cache_control: Option<String>,
    metadata: Option<Metadata>,
) -> StoredHeaders {
    StoredHeaders { content_type, content_encoding, content_disposition, cache_control, metadata }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let mut buckets: Vec<BucketRecord> =
            self.list_all::<BucketRecord>("b/").await?.into_iter().map(|(_, b)| b).collect();
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        let buckets = buckets
            .into_iter()
            .map(|b| Bucket { name: Some(b.name), creation_date: Some(ts(b.created)), bucket_region: None })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner { display_name: Some("p2pstore".into()), id: Some(self.client.account_id()) }),
            ..Default::default()
        }))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = req.input.bucket;
        let rec = BucketRecord { name: name.clone(), created: now() };
        match self.put_record(&self.bucket_key(&name), &rec, true).await {
            Ok(_) => Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{name}")) })),
            Err(e) if e.status() == Some(hyper::StatusCode::CONFLICT) => {
                Err(s3_error!(BucketAlreadyOwnedByYou, "you own bucket {name} already"))
            }
            Err(e) => Err(client_err(e)),
        }
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput { bucket_region: Some("us-east-1".into()), ..Default::default() }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        self.require_bucket(&bucket).await?;
        for prefix in [self.objects_prefix(&bucket), self.uploads_prefix(&bucket)] {
            let (page, _) = self.client.name_list(&prefix, "", 1, true).await.map_err(client_err)?;
            if !page.is_empty() {
                return Err(s3_error!(BucketNotEmpty, "bucket {bucket} holds objects or uploads"));
            }
        }
        self.client.name_delete(&[self.bucket_key(&bucket)]).await.map_err(client_err)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        self.require_bucket(&input.bucket).await?;
        let size = input.content_length.ok_or_else(|| s3_error!(MissingContentLength))?;
        let size = u64::try_from(size).map_err(|_| s3_error!(InvalidArgument, "negative Content-Length"))?;
        if input.if_none_match.is_some() || input.if_match.is_some() {
            let existing: Option<ObjectRecord> = self.get_record(&self.object_key(&input.bucket, &input.key)).await?;
            if input.if_none_match.as_ref().is_some_and(ETagCondition::is_any) && existing.is_some() {
                return Err(s3_error!(PreconditionFailed, "the key exists"));
            }
            if let Some(c) = &input.if_match {
                match (c, &existing) {
                    (_, None) => return Err(s3_error!(NoSuchKey)),
                    (ETagCondition::ETag(e), Some(o)) if !e.strong_cmp(&strong(&o.etag)) => {
                        return Err(s3_error!(PreconditionFailed, "If-Match does not match"));
                    }
                    _ => {}
                }
            }
        }
        let given = announced_checksums!(input);
        let alg = input.checksum_algorithm.as_ref();
        let checks = BodyChecks::new(size, input.content_md5, &given, alg, &req.headers, req.trailing_headers)?;
        let (part, md5) = self.store(input.body, checks).await?;
        let etag = hex::encode(md5);
        let rec = ObjectRecord {
            size,
            etag: etag.clone(),
            modified: now(),
            headers: headers_of(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.cache_control,
                input.metadata,
            ),
            parts: part.into_iter().collect(),
            parts_count: None,
        };
        self.write_object(&input.bucket, &input.key, &rec).await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(strong(&etag)),
            checksum_crc32: given.checksum_crc32,
            checksum_crc32c: given.checksum_crc32c,
            checksum_sha1: given.checksum_sha1,
            checksum_sha256: given.checksum_sha256,
            checksum_crc64nvme: given.checksum_crc64nvme,
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(NotImplemented, "GetObject with partNumber is not supported"));
        }
        let obj = self.get_object_record(&input.bucket, &input.key).await?;
        check_conditions(
            &obj,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let total = obj.size;
        let (range, content_range) = match input.range {
            None => (0..total, None),
            Some(r) => {
                let rng = r.check(total)?;
                let cr = format!("bytes {}-{}/{}", rng.start, rng.end - 1, total);
                (rng, Some(cr))
            }
        };
        let len = range.end - range.start;
        let h = obj.headers.clone();
        Ok(S3Response::new(GetObjectOutput {
            content_length: Some(len as i64),
            content_range,
            body: Some(self.read_stream(obj.parts.clone(), range)),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(strong(&obj.etag)),
            last_modified: Some(ts(obj.modified)),
            content_type: h.content_type.or_else(|| Some("binary/octet-stream".into())),
            content_encoding: h.content_encoding,
            content_disposition: h.content_disposition,
            cache_control: h.cache_control,
            metadata: h.metadata,
            parts_count: obj.parts_count,
            ..Default::default()
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let obj = self.get_object_record(&input.bucket, &input.key).await?;
        check_conditions(
            &obj,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let h = obj.headers;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(obj.size as i64),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(strong(&obj.etag)),
            last_modified: Some(ts(obj.modified)),
            content_type: h.content_type.or_else(|| Some("binary/octet-stream".into())),
            content_encoding: h.content_encoding,
            content_disposition: h.content_disposition,
            cache_control: h.cache_control,
            metadata: h.metadata,
            parts_count: obj.parts_count,
            ..Default::default()
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        self.remove_object(&req.input.bucket, &req.input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let bucket = input.bucket.clone();
        let results: Vec<(String, S3Result<()>)> = futures::stream::iter(input.delete.objects)
            .map(|oid| {
                let bucket = bucket.clone();
                async move {
                    let r = self.remove_object(&bucket, &oid.key).await;
                    (oid.key, r)
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for (key, r) in results {
            match r {
                Ok(()) if !quiet => deleted.push(DeletedObject { key: Some(key), ..Default::default() }),
                Ok(()) => {}
                Err(e) => errors.push(Error {
                    key: Some(key),
                    code: Some(e.code().as_str().to_owned()),
                    message: e.message().map(str::to_owned),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        let CopySource::Bucket { bucket: sb, key: sk, version_id } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "only bucket/key copy sources are supported"));
        };
        // Objects have no versions here: copying "a version" of one would copy another thing.
        if version_id.is_some() {
            return Err(s3_error!(InvalidArgument, "Invalid version id specified (this gateway keeps no versions)"));
        }
        let (sb, sk) = (sb.to_string(), sk.to_string());
        let src = self.get_object_record(&sb, &sk).await?;
        check_conditions(
            &src,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| if *e.code() == S3ErrorCode::NotModified { s3_error!(PreconditionFailed) } else { e })?;
        self.require_bucket(&input.bucket).await?;
        let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let same = sb == input.bucket && sk == input.key;
        if same && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata"
            ));
        }
        let mut dst = src.clone();
        dst.modified = now();
        if replace {
            dst.headers = headers_of(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.cache_control,
                input.metadata,
            );
        }
        if !same {
            // New files of their own, so deleting either object never touches the other.
            let body = self.read_stream(src.parts.clone(), 0..src.size);
            let (part, _) = self.store(Some(body), BodyChecks::plain(src.size)).await?;
            dst.parts = part.into_iter().collect();
        }
        self.write_object(&input.bucket, &input.key, &dst).await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(strong(&dst.etag)),
                last_modified: Some(ts(dst.modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let token = input.continuation_token.as_deref().map(un_b64url).transpose()?;
        let continued = token.is_some();
        let after = token.or_else(|| input.start_after.clone());
        let objects = self.list_objects_under(&input.bucket, &prefix, continued).await?;
        let listing = list_page(&objects, &prefix, input.delimiter.as_deref(), after.as_deref(), max_keys as usize);
        let key_count = listing.entries.len() as i32;
        let (mut contents, mut cps) = (Vec::new(), Vec::new());
        for e in listing.entries {
            match e {
                Entry::Obj(mut o) => {
                    o.key = o.key.map(|k| enc(k, url));
                    contents.push(*o);
                }
                Entry::Prefix(p) => cps.push(CommonPrefix { prefix: Some(enc(p, url)) }),
            }
        }
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(prefix, url)),
            delimiter: input.delimiter.map(|d| enc(d, url)),
            start_after: input.start_after.map(|s| enc(s, url)),
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            is_truncated: Some(listing.truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: if listing.truncated { listing.last.as_deref().map(b64url) } else { None },
            contents: Some(contents),
            common_prefixes: Some(cps),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    /// ListObjects (version 1): rclone uses it by default.
    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url = input.encoding_type.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let continued = input.marker.as_ref().is_some_and(|m| !m.is_empty());
        let objects = self.list_objects_under(&input.bucket, &prefix, continued).await?;
        let listing =
            list_page(&objects, &prefix, input.delimiter.as_deref(), input.marker.as_deref(), max_keys as usize);
        let (mut contents, mut cps) = (Vec::new(), Vec::new());
        for e in listing.entries {
            match e {
                Entry::Obj(mut o) => {
                    o.key = o.key.map(|k| enc(k, url));
                    contents.push(*o);
                }
                Entry::Prefix(p) => cps.push(CommonPrefix { prefix: Some(enc(p, url)) }),
            }
        }
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(prefix, url)),
            delimiter: input.delimiter.map(|d| enc(d, url)),
            marker: Some(enc(input.marker.unwrap_or_default(), url)),
            max_keys: Some(max_keys),
            is_truncated: Some(listing.truncated),
            next_marker: if listing.truncated { listing.last.map(|l| enc(l, url)) } else { None },
            contents: Some(contents),
            common_prefixes: Some(cps),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        check_key(&input.key)?;
        self.require_bucket(&input.bucket).await?;
        let upload_id = random_hex(16);
        let rec = UploadRecord {
            key: input.key.clone(),
            initiated: now(),
            headers: headers_of(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.cache_control,
                input.metadata,
            ),
        };
        let name = format!("{}{upload_id}", self.uploads_prefix(&input.bucket));
        self.put_record(&name, &rec, true).await.map_err(client_err)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            checksum_algorithm: input.checksum_algorithm,
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        if !(1..=MAX_PARTS).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "Part number must be an integer between 1 and 10000, inclusive"));
        }
        self.get_upload(&input.bucket, &input.key, &input.upload_id).await?;
        let size = input.content_length.ok_or_else(|| s3_error!(MissingContentLength))?;
        let size = u64::try_from(size).map_err(|_| s3_error!(InvalidArgument, "negative Content-Length"))?;
        let given = announced_checksums!(input);
        let alg = input.checksum_algorithm.as_ref();
        let checks = BodyChecks::new(size, input.content_md5, &given, alg, &req.headers, req.trailing_headers)?;
        let (file, md5) = self.store(input.body, checks).await?;
        let rec = PartRecord { file, size, md5: hex::encode(md5), modified: now() };
        let _turn = self.turns.take(&input.upload_id).await;
        // Completed or aborted while the body came: the part is of no use.
        if let Err(e) = self.get_upload(&input.bucket, &input.key, &input.upload_id).await {
            self.delete_files(rec.file.into_iter().collect()).await;
            return Err(e);
        }
        let name = Self::part_key(&input.upload_id, input.part_number);
        let old: Option<PartRecord> = self.get_record(&name).await.unwrap_or(None);
        self.put_record(&name, &rec, false).await.map_err(client_err)?;
        if let Some(old_file) = old.and_then(|o| o.file) {
            self.delete_files(vec![old_file]).await;
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(strong(&rec.md5)),
            checksum_crc32: given.checksum_crc32,
            checksum_crc32c: given.checksum_crc32c,
            checksum_sha1: given.checksum_sha1,
            checksum_sha256: given.checksum_sha256,
            checksum_crc64nvme: given.checksum_crc64nvme,
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let wanted = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if wanted.is_empty() {
            return Err(s3_error!(MalformedXML, "You must specify at least one part"));
        }
        let numbers =
            wanted.iter().map(|p| p.part_number.ok_or_else(|| s3_error!(InvalidPart, "a part has no PartNumber")));
        let numbers: Vec<i32> = numbers.collect::<S3Result<_>>()?;
        // As S3 does: the order is checked before any part.
        if numbers.windows(2).any(|w| w[1] <= w[0]) {
            return Err(s3_error!(InvalidPartOrder, "parts must be listed in ascending order"));
        }
        let turn = self.turns.take(&input.upload_id).await;
        let up = self.get_upload(&input.bucket, &input.key, &input.upload_id).await?;
        let have = self.upload_parts(&input.upload_id).await?;
        let mut etag_md5 = Md5::new();
        let mut parts = Vec::new();
        let mut size = 0;
        for (i, (p, &n)) in wanted.iter().zip(&numbers).enumerate() {
            let part = have.get(&n).ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
            if let Some(e) = &p.e_tag
                && e.value() != part.md5
            {
                return Err(s3_error!(InvalidPart, "the ETag of part {n} does not match"));
            }
            if i + 1 < wanted.len() && part.size < MIN_PART_SIZE {
                return Err(s3_error!(EntityTooSmall, "part {n} is smaller than 5 MiB"));
            }
            let raw = hex::decode(&part.md5).map_err(|_| s3_error!(InternalError, "a stored part MD5 is not hex"))?;
            etag_md5.update(&raw);
            size += part.size;
            parts.extend(part.file.clone());
        }
        let etag = format!("{}-{}", hex::encode(etag_md5.finalize()), wanted.len());
        let rec = ObjectRecord {
            size,
            etag: etag.clone(),
            modified: now(),
            headers: up.headers,
            parts,
            parts_count: Some(wanted.len() as i32),
        };
        let used: std::collections::HashSet<i32> = wanted.iter().filter_map(|p| p.part_number).collect();
        let this = self.clone();
        let (bucket, key, upload_id) = (input.bucket, input.key, input.upload_id);
        let fut = async move {
            let _turn = turn;
            this.write_object(&bucket, &key, &rec).await?;
            let mut names = vec![format!("{}{upload_id}", this.uploads_prefix(&bucket))];
            names.extend(have.keys().map(|n| Self::part_key(&upload_id, *n)));
            this.delete_names(names).await?;
            let unused = have.into_iter().filter(|(n, _)| !used.contains(n)).filter_map(|(_, p)| p.file).collect();
            this.delete_files(unused).await;
            Ok(CompleteMultipartUploadOutput {
                bucket: Some(bucket.clone()),
                key: Some(key.clone()),
                e_tag: Some(strong(&etag)),
                location: Some(format!("/{bucket}/{key}")),
                ..Default::default()
            })
        };
        Ok(S3Response::new(CompleteMultipartUploadOutput { future: Some(Box::pin(fut)), ..Default::default() }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let _turn = self.turns.take(&input.upload_id).await;
        self.get_upload(&input.bucket, &input.key, &input.upload_id).await?;
        let have = self.upload_parts(&input.upload_id).await?;
        let mut names = vec![format!("{}{}", self.uploads_prefix(&input.bucket), input.upload_id)];
        names.extend(have.keys().map(|n| Self::part_key(&input.upload_id, *n)));
        self.delete_names(names).await?;
        self.delete_files(have.into_values().filter_map(|p| p.file).collect()).await;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.get_upload(&input.bucket, &input.key, &input.upload_id).await?;
        let have = self.upload_parts(&input.upload_id).await?;
        let max_parts = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let marker = input.part_number_marker.unwrap_or(0);
        let mut parts = Vec::new();
        let mut truncated = false;
        for (n, p) in have.range(marker + 1..) {
            if parts.len() == max_parts {
                truncated = true;
                break;
            }
            parts.push(Part {
                part_number: Some(*n),
                e_tag: Some(strong(&p.md5)),
                size: Some(p.size as i64),
                last_modified: Some(ts(p.modified)),
                ..Default::default()
            });
        }
        let next = if truncated { parts.last().and_then(|p| p.part_number) } else { None };
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max_parts as i32),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(parts),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uprefix = self.uploads_prefix(&input.bucket);
        let mut ups: Vec<(String, UploadRecord)> = self
            .list_all::<UploadRecord>(&uprefix)
            .await?
            .into_iter()
            .filter(|(_, u)| u.key.starts_with(&prefix))
            .map(|(k, u)| (k[uprefix.len()..].to_owned(), u))
            .collect();
        ups.sort_by(|a, b| (&a.1.key, a.1.initiated, &a.0).cmp(&(&b.1.key, b.1.initiated, &b.0)));
        // Pages as S3 gives them: after the key marker (and, on that key, after the upload
        // id marker), at most `max-uploads`.
        if let Some(km) = input.key_marker.clone() {
            let marker =
                input.upload_id_marker.as_ref().and_then(|im| ups.iter().find(|(i, u)| i == im && u.key == km));
            let after = marker.map(|(i, u)| (u.key.clone(), u.initiated, i.clone()));
            ups.retain(|(id, u)| match &after {
                Some((k, at, i)) => (&u.key, u.initiated, id) > (k, *at, i),
                None => u.key > km,
            });
        }
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let truncated = ups.len() > max;
        ups.truncate(max);
        let next = truncated.then(|| ups.last().map(|(id, u)| (u.key.clone(), id.clone()))).flatten();
        let uploads = ups
            .into_iter()
            .map(|(id, u)| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(id),
                initiated: Some(ts(u.initiated)),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker: next.as_ref().map(|n| n.0.clone()),
            next_upload_id_marker: next.map(|n| n.1),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_open_with_their_stretched_key_or_else_their_password() {
        let secret = Secret::stretch(b"pw", Salt([3; SALT_LEN]), MIN_ITERATIONS).unwrap();
        let mut part = PartRef { file: "f".into(), password: "pw".into(), key: stretched_hex(&secret), size: 1 };
        assert!(matches!(part.secret(), Secret::Stretched { salt, .. } if salt == Salt([3; SALT_LEN])));
        assert!(!format!("{part:?}").contains(part.key.as_deref().unwrap()), "no key in Debug output");
        let new =
            PartRef { file: "f".into(), password: String::new(), key: stretched_hex(&Secret::random_key()), size: 1 };
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains("\"password\":\"\""), "gateways of before require the field: {json}");
        for older_or_damaged in [None, Some("zz".to_owned()), Some("00".repeat(SALT_LEN + 31))] {
            part.key = older_or_damaged;
            assert!(matches!(part.secret(), Secret::Password(p) if p == b"pw"));
        }
    }

    #[test]
    fn segments_fit_s3_parts() {
        assert_eq!(segment_size(1), MIN_SEGMENT_SIZE);
        assert_eq!(segment_size(8 << 20), (8 << 20) + 16);
        assert_eq!(segment_size(1 << 30), (8 << 20) + 16);
    }

    #[test]
    fn listing_pages_group_by_delimiter() {
        let mut objs = BTreeMap::new();
        for k in ["a/1", "a/2", "b", "c/x/y", "c/z"] {
            objs.insert(k.to_owned(), ObjectRecord::default());
        }
        let l = list_page(&objs, "", Some("/"), None, 2);
        assert!(l.truncated);
        assert_eq!(l.last.as_deref(), Some("b"));
        let l = list_page(&objs, "", Some("/"), Some("b"), 2);
        assert!(!l.truncated);
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.last.as_deref(), Some("c/"));
    }
}
