//! Arbitrary HTTP requests to a real coordinator and its two nodes, started once per process
//! in a temporary directory (`Devnet`), with one file committed and one upload planned so
//! that the routes have something to find. After every input the server it went to must
//! still answer `/healthz` and a route that reads its database, within a timeout; any panic
//! anywhere in the process aborts it (libFuzzer's panic hook), so a handler's panic is found
//! even though the server would survive it.
//!
//! Input layout (every byte string is a valid input):
//! - byte 0, the server: 0 coordinator, 1 node 0, 2 node 1 (mod 3);
//! - byte 1, how the request is sent (mod 4): 0 as is; 1 signed by the harness's account
//!   (a valid `x-p2pstore-auth` header over the method, path and body); 2 the same with a fresh
//!   account; 3 raw: the rest of the input is written to the socket verbatim;
//! - byte 2, the body (mod 14): 0 as is, else wrapped as a `Signed<T>` of the (byte − 1)th
//!   message kind of [`KINDS`], validly signed by the key byte 3 names;
//! - byte 3, the signing key (mod 4): 0 the coordinator's, 1 a fixed node key (never
//!   registered), 2 a fresh key, 3 the account's;
//! - the rest: `METHOD TARGET` on the first line, `name: value` header lines, an empty line,
//!   then the body. The harness adds Host, Content-Length and `Connection: close` unless
//!   the input gives them (or Transfer-Encoding).
//!
//! Placeholders `{name}` anywhere in the rest are replaced with values of the running
//! network (see [`World::value`] and `vars` in [`World::setup`]): ids of its peers, file,
//! uploads and shards, the time, a fresh nonce, an increasing sequence number, …; `{b3}` in
//! the head is the BLAKE3 hash of the body (a shard id), and a header `name: !kind text`
//! carries `text` as a `Signed<T>` of that kind (`read-grant`, `put-order`, …), signed by the
//! key byte 3 names.

#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use p2pstore::config::Config;
use p2pstore::core::codec::EncodeParams;
use p2pstore::core::crypto::{MIN_ITERATIONS, Salt};
use p2pstore::core::erasure::Shape;
use p2pstore::core::identity::{Identity, pow_bits};
use p2pstore::devnet::Devnet;
use p2pstore::proto::{
    AUTH_HEADER, BrowserStarted, Inventory, InventoryRequest, Message, PlanRequest, RequestAuth, Sign, tagged,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reply must have come by then (the longest legitimate wait is a dial-back: 5 s to
/// resolve, 5 s to connect and answer).
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// Until then the request is left open; then the harness closes its side of the connection,
/// so a body shorter than its declared length ends instead of stalling.
const HALF_CLOSE_AFTER: Duration = Duration::from_secs(2);
/// A health check must answer within this.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

struct Net {
    rt: tokio::runtime::Runtime,
    w: World,
}

/// The running network and what the harness knows of it.
struct World {
    /// The network, kept running for the life of the process.
    _devnet: Mutex<Devnet>,
    dir: PathBuf,
    /// Coordinator, node 0, node 1.
    addrs: [SocketAddr; 3],
    coordinator: Identity,
    account: Identity,
    fuzz_node: Identity,
    /// Placeholder values that do not change; per-target and fresh ones are made in `value`.
    vars: BTreeMap<&'static str, String>,
    peers: [String; 2],
    shards: [String; 2],
    seq: AtomicU64,
    /// 5xx answers seen, by their first line of body, to report each once.
    errors: Mutex<BTreeMap<String, u64>>,
    inputs: AtomicU64,
}

static NET: OnceLock<Net> = OnceLock::new();

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn fresh_hex() -> String {
    hex::encode(Salt::random().0)
}

extern "C" fn remove_dir() {
    if let Some(Net { w: net, .. }) = NET.get() {
        let _ = std::fs::remove_dir_all(&net.dir);
        let errors = net.errors.lock().unwrap_or_else(|e| e.into_inner());
        if !errors.is_empty() {
            eprintln!("routes: server errors (5xx) seen over {} inputs:", net.inputs.load(Ordering::Relaxed));
            for (e, n) in errors.iter() {
                eprintln!("  {n} × {e}");
            }
        }
    }
}

unsafe extern "C" {
    fn atexit(f: extern "C" fn()) -> i32;
}

impl Net {
    fn start() -> Net {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("p2pstore-fuzz-routes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = Config::default();
        // Connections that send nothing are closed soon; the harness's own account may ask for
        // as many plans as the fuzzer likes.
        config.limits.header_timeout = 2;
        config.limits.plans_per_minute = 1_000_000;
        config.limits.pending_uploads = 1_000_000;
        let started = Instant::now();
        let w = rt.block_on(World::setup(config, &dir));
        eprintln!("routes: network up in {:.1} s at {}", started.elapsed().as_secs_f64(), dir.display());
        // SAFETY: registering a plain function to run at exit.
        unsafe { atexit(remove_dir) };
        Net { rt, w }
    }
}

impl World {
    async fn setup(config: Config, dir: &std::path::Path) -> World {
        let devnet = Devnet::start(config, &dir.join("net"), 0, 2).await.expect("the network starts");
        let url = devnet.url();
        let coordinator = p2pstore::store::identity::load_or_create(&devnet.dir.join("coordinator")).unwrap();
        let node_keys: Vec<Identity> =
            (0..2).map(|i| p2pstore::store::identity::load_or_create(&devnet.node_dir(i)).unwrap()).collect();
        // The harness's account: the client below and the harness sign with the same key.
        let account_pkcs8 = Identity::generate_pkcs8();
        let account = Identity::from_pkcs8(&account_pkcs8).unwrap();
        let client = p2pstore::Client::new(&url, Arc::new(Identity::from_pkcs8(&account_pkcs8).unwrap()));

        // One committed file of two segments, 1-of-2 coded, and one planned upload.
        let file = dir.join("seed.bin");
        std::fs::write(&file, (0..6000u32).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>()).unwrap();
        let params = EncodeParams { shape: Shape::new(1, 2).unwrap(), segment_size: 4096, iterations: MIN_ITERATIONS };
        let file_id = client.upload(&file, b"fuzz", params, None).await.expect("the seed file uploads");
        let manifest = client.manifest(&file_id).await.unwrap();
        let view = client.info(&file_id).await.unwrap();
        let plan = client
            .plan(&PlanRequest { size: 1000, k: 1, n: 2, segment_size: 4096 })
            .await
            .expect("an upload is planned");

        let started = serde_json::to_vec(&PlanRequest { size: 5000, k: 1, n: 2, segment_size: 4096 }).unwrap();
        let reply = client.send_signed("POST", "/v2/browser/uploads", started.into()).await.unwrap();
        let browser: BrowserStarted = reply.json().expect("a browser upload starts");

        let peers = [node_keys[0].peer_id(), node_keys[1].peer_id()];
        let peer_views = client.peers().await.unwrap();
        let addr_of = |peer: &str| -> SocketAddr {
            let a = &peer_views.iter().find(|p| p.peer_id == peer).expect("both nodes registered").address;
            a.trim_start_matches("http://").parse().unwrap()
        };
        let coordinator_addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let addrs = [coordinator_addr, addr_of(&peers[0]), addr_of(&peers[1])];
        let shard_of = |peer: &str| {
            let j = view.placements[0].iter().position(|p| p == peer).expect("each node holds a shard");
            manifest.segments[0].shard_ids[j].to_hex()
        };
        let shards = [shard_of(&peers[0]), shard_of(&peers[1])];

        // The database generation and the committed upload's id, as node 0 knows them once the
        // commit notice reached it.
        let http = p2pstore::net::client::Client::new(Duration::from_secs(10));
        let mut generation = String::new();
        let mut committed_upload = String::new();
        for _ in 0..50 {
            let req = InventoryRequest { peer_id: peers[0].clone(), after: None, expires: now() + 600 };
            let reply = http.post_json(&format!("http://{}/v2/inventory", addrs[1]), &coordinator.sign(&req)).await;
            if let Ok(inv) = reply.and_then(|r| r.json::<Inventory>()) {
                if let (Some(g), Some(copy)) = (inv.generation, inv.manifests.first().and_then(|m| m.open())) {
                    generation = g;
                    committed_upload = copy.upload_id;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let fuzz_node = Identity::from_pkcs8(&Identity::generate_pkcs8()).unwrap();
        let pow = (0u64..).find(|n| pow_bits(fuzz_node.public_key(), *n) >= 16).unwrap();

        let mut vars = BTreeMap::new();
        vars.insert("coord", coordinator.peer_id());
        vars.insert("coordkey", coordinator.public_key_hex());
        vars.insert("peer0", peers[0].clone());
        vars.insert("peer1", peers[1].clone());
        vars.insert("node0", format!("http://{}", addrs[1]));
        vars.insert("node1", format!("http://{}", addrs[2]));
        vars.insert("fuzznode", fuzz_node.peer_id());
        vars.insert("fuzznodekey", fuzz_node.public_key_hex());
        vars.insert("pow", pow.to_string());
        vars.insert("account", account.public_key_hex());
        vars.insert("accountid", account.peer_id());
        vars.insert("file", file_id.to_string());
        vars.insert("manifest", hex::encode(manifest.to_bytes()));
        vars.insert("salt", hex::encode(manifest.salt.0));
        vars.insert("upload", plan.upload_id.clone());
        vars.insert("bupload", browser.upload_id.clone());
        vars.insert("committed", committed_upload);
        vars.insert("gen", generation);
        vars.insert("zero", "0".repeat(64));

        World {
            _devnet: Mutex::new(devnet),
            dir: dir.to_owned(),
            addrs,
            coordinator,
            account,
            fuzz_node,
            vars,
            peers,
            shards,
            seq: AtomicU64::new(now() * 1000),
            errors: Mutex::new(BTreeMap::new()),
            inputs: AtomicU64::new(0),
        }
    }

    /// The value of placeholder `name` for a request to server `target`.
    fn value(&self, name: &str, target: usize) -> Option<String> {
        let node = target.saturating_sub(1);
        Some(match name {
            // The node the request goes to (node 0 for the coordinator).
            "peer" => self.peers[node].clone(),
            "shard" => self.shards[node].clone(),
            "shard0" => self.shards[0].clone(),
            "shard1" => self.shards[1].clone(),
            "now" => now().to_string(),
            "later" => (now() + 3600).to_string(),
            "past" => (now() - 3600).to_string(),
            "seq" => self.seq.fetch_add(1, Ordering::Relaxed).to_string(),
            "nonce" => fresh_hex(),
            other => self.vars.get(other)?.clone(),
        })
    }

    /// `text` with every known `{name}` replaced.
    fn substitute(&self, text: &[u8], target: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'{' {
                let end = text[i + 1..].iter().take(16).position(|&b| b == b'}');
                let name = end.and_then(|e| std::str::from_utf8(&text[i + 1..i + 1 + e]).ok());
                if let Some(v) = name.and_then(|n| self.value(n, target)) {
                    out.extend_from_slice(v.as_bytes());
                    i += end.unwrap() + 2;
                    continue;
                }
            }
            out.push(text[i]);
            i += 1;
        }
        out
    }

    fn key(&self, which: u8) -> KeyRef<'_> {
        match which % 4 {
            0 => KeyRef::Borrowed(&self.coordinator),
            1 => KeyRef::Borrowed(&self.fuzz_node),
            2 => KeyRef::Owned(Identity::from_pkcs8(&Identity::generate_pkcs8()).unwrap()),
            _ => KeyRef::Borrowed(&self.account),
        }
    }
}

enum KeyRef<'a> {
    Borrowed(&'a Identity),
    Owned(Identity),
}

impl std::ops::Deref for KeyRef<'_> {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        match self {
            KeyRef::Borrowed(k) => k,
            KeyRef::Owned(k) => k,
        }
    }
}

/// The purpose tags of the message kinds a body may be signed as.
const KINDS: [&str; 13] = [
    <p2pstore::proto::Heartbeat as Message>::KIND,
    <p2pstore::proto::ExitRequest as Message>::KIND,
    <p2pstore::proto::PutOrder as Message>::KIND,
    <p2pstore::proto::Receipt as Message>::KIND,
    <p2pstore::proto::Notice as Message>::KIND,
    <p2pstore::proto::ManifestCopy as Message>::KIND,
    <p2pstore::proto::InventoryRequest as Message>::KIND,
    <p2pstore::proto::Challenge as Message>::KIND,
    <p2pstore::proto::AuditAnswer as Message>::KIND,
    <p2pstore::proto::ReadGrant as Message>::KIND,
    <p2pstore::proto::Identified as Message>::KIND,
    <p2pstore::proto::AdminRequest as Message>::KIND,
    <p2pstore::proto::DamageReport as Message>::KIND,
];

/// `body` as the JSON of a `Signed<T>` of `kind`, signed by `key`.
fn signed_json(kind: &str, body: &[u8], key: &Identity) -> Vec<u8> {
    let body = String::from_utf8_lossy(body).into_owned();
    let sig = hex::encode(key.sign_bytes(&tagged(kind, &body)));
    serde_json::to_vec(&serde_json::json!({ "body": body, "signer": key.public_key_hex(), "sig": sig })).unwrap()
}

/// `text` with every `from` replaced by `to`.
fn replace(text: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// The request an input describes, as bytes for the socket.
fn build(net: &World, target: usize, data: &[u8]) -> Vec<u8> {
    let (control, rest) = data.split_at(data.len().min(4));
    let byte = |i: usize| control.get(i).copied().unwrap_or(0);
    let rest = net.substitute(rest, target);
    let send = byte(1) % 4;
    if send == 3 {
        return rest;
    }
    // Head and body.
    let split = rest.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let split = split.or_else(|| rest.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, 4)));
    let (head, body) = match split {
        Some((p, n)) => (&rest[..p], &rest[p + n..]),
        None => (&rest[..], &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let (method, path) = match first.iter().position(|&b| b == b' ') {
        Some(p) => (&first[..p], &first[p + 1..]),
        None => (first, &b"/"[..]),
    };
    let (method, path) =
        (if method.is_empty() { &b"GET"[..] } else { method }, if path.is_empty() { &b"/"[..] } else { path });
    let headers: Vec<&[u8]> = lines.filter(|l| !l.is_empty()).collect();
    let body = match byte(2) as usize % (KINDS.len() + 1) {
        0 => body.to_vec(),
        k => signed_json(KINDS[k - 1], body, &net.key(byte(3))),
    };
    // `{b3}` in the head: the BLAKE3 hash of the body (a shard's id).
    let b3 = blake3::hash(&body).to_hex();
    let path = replace(path, b"{b3}", b3.as_bytes());
    // A header `name: !kind text` carries `text` signed as a message of that kind.
    let headers: Vec<Vec<u8>> = headers
        .iter()
        .map(|h| {
            let h = replace(h, b"{b3}", b3.as_bytes());
            let Some(colon) = h.iter().position(|&b| b == b':') else { return h };
            let value = h[colon + 1..].trim_ascii_start();
            let Some(signed) = value.strip_prefix(b"!") else { return h };
            let (kind, text) = signed.split_at(signed.iter().position(|&b| b == b' ').unwrap_or(signed.len()));
            let Some(kind) = KINDS.iter().find(|k| k.as_bytes() == kind) else { return h };
            let mut line = h[..colon + 1].to_vec();
            line.push(b' ');
            line.extend_from_slice(&signed_json(kind, text.trim_ascii_start(), &net.key(byte(3))));
            line
        })
        .collect();
    let has = |name: &str| {
        headers.iter().any(|h| {
            h.split(|&b| b == b':').next().is_some_and(|n| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
    };

    let mut req = Vec::with_capacity(256 + body.len());
    req.extend_from_slice(method);
    req.push(b' ');
    req.extend_from_slice(&path);
    req.extend_from_slice(b" HTTP/1.1\r\n");
    if !has("host") {
        req.extend_from_slice(format!("host: {}\r\n", net.addrs[target]).as_bytes());
    }
    for h in &headers {
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n");
    }
    if send == 1 || send == 2 {
        let account = if send == 1 { KeyRef::Borrowed(&net.account) } else { net.key(2) };
        let (m, p) = (String::from_utf8_lossy(method), String::from_utf8_lossy(&path));
        let coordinator = &net.vars["coord"];
        let auth = RequestAuth::sign(&account, coordinator, &m, &p, (now(), fresh_hex()), &body);
        req.extend_from_slice(format!("{AUTH_HEADER}: {}\r\n", auth.header()).as_bytes());
    }
    if !has("content-length") && !has("transfer-encoding") {
        req.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    if !has("connection") {
        req.extend_from_slice(b"connection: close\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    req
}

/// Sends `req` to `addr` and reads the reply until the server closes the connection;
/// `half_close_after`: when to shut the sending side. Err when no end came in time.
async fn exchange(addr: SocketAddr, req: &[u8], half_close_after: Duration) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
    let started = Instant::now();
    // The server may answer (and close) before taking the whole request: a failed write is
    // not an error, the reply is what counts.
    let _ = tokio::time::timeout(REPLY_TIMEOUT, s.write_all(req)).await;
    let mut reply = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 16 << 10];
    loop {
        let wait = if closed { REPLY_TIMEOUT.saturating_sub(started.elapsed()) } else { half_close_after };
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(reply),
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) if !closed => {
                let _ = s.shutdown().await;
                closed = true;
            }
            Err(_) => return Err(format!("no end of the reply after {:?}: {} bytes", started.elapsed(), reply.len())),
        }
        if reply.len() > 64 << 20 {
            return Ok(reply);
        }
    }
}

/// The status of an HTTP reply, if it has a status line.
fn status(reply: &[u8]) -> Option<u16> {
    let line = reply.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line.get(9..12)?).ok()?.parse().ok()
}

async fn healthy(net: &World, target: usize) {
    let addr = net.addrs[target];
    let deep = if target == 0 { "/v2/stats" } else { "/v2/status" };
    for path in ["/healthz", deep] {
        let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        let r = tokio::time::timeout(HEALTH_TIMEOUT, exchange(addr, req.as_bytes(), HEALTH_TIMEOUT)).await;
        match r {
            Ok(Ok(reply)) if status(&reply) == Some(200) => {}
            Ok(Ok(reply)) => panic!(
                "server {target} answers GET {path} with: {}",
                String::from_utf8_lossy(&reply[..reply.len().min(500)])
            ),
            Ok(Err(e)) => panic!("server {target} does not answer GET {path}: {e}"),
            Err(_) => panic!("server {target} does not answer GET {path} within {HEALTH_TIMEOUT:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Net { rt, w: net } = NET.get_or_init(Net::start);
    net.inputs.fetch_add(1, Ordering::Relaxed);
    let target = data.first().map_or(0, |b| (b % 3) as usize);
    let req = build(net, target, data);
    let raw = data.get(1).is_some_and(|b| b % 4 == 3);
    rt.block_on(async {
        let half_close = if raw { Duration::ZERO } else { HALF_CLOSE_AFTER };
        let reply = exchange(net.addrs[target], &req, half_close).await;
        if std::env::var_os("ROUTES_TRACE").is_some() {
            let first =
                |b: &[u8]| String::from_utf8_lossy(b.split(|&c| c == b'\n').next().unwrap_or_default()).into_owned();
            let answer = reply.as_ref().map_or_else(
                |e| e.clone(),
                |r| {
                    let body = r.split(|&c| c == b'\n').next_back().unwrap_or_default();
                    format!("{} {}", first(r).trim_end(), String::from_utf8_lossy(&body[..body.len().min(150)]))
                },
            );
            eprintln!("routes: {target} {} → {answer}", first(&req).trim_end());
        }
        match reply {
            Ok(reply) if status(&reply).is_some_and(|s| s >= 500) => {
                let body = reply.split(|&b| b == b'\n').last().unwrap_or_default();
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                let code = status(&reply).unwrap();
                let mut errors = net.errors.lock().unwrap();
                let n = errors.entry(format!("{code} {text}")).or_insert(0);
                if *n == 0 && std::env::var_os("ROUTES_QUIET").is_none() {
                    eprintln!("routes: {code} from server {target}: {text}");
                }
                *n += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("server {target} hangs on this request: {e}\n{}", String::from_utf8_lossy(&req)),
        }
        healthy(net, target).await;
    });
});
