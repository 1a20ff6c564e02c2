//! Measurements on this machine for `p2pstore bench` (and `cargo bench`): each codec stage
//! alone, then the whole pipelines, in MB/s of plaintext, and the peak memory of encoding.
//! Figures are reported, never asserted: speed targets live in benchmarks, not tests.

mod upkeep;

pub use upkeep::{AdmissionRun, admission, audits, repair};

use std::io::{self, Read};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::codec::{Decoder, EncodeParams, Encoder, shard_ids};
use crate::core::crypto::{FileKeys, Salt};
use crate::core::erasure;
use crate::core::manifest::{FileMeta, Manifest, SegmentEntry};

/// An endless-looking input of `len` bytes that costs nothing to produce (the encryption
/// makes its repetition irrelevant to every later stage).
pub struct PatternReader {
    remaining: u64,
    pattern: Vec<u8>,
    pos: usize,
}

impl PatternReader {
    pub fn new(len: u64) -> PatternReader {
        let pattern = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        PatternReader { remaining: len, pattern, pos: 0 }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining as usize).min(self.pattern.len() - self.pos);
        buf[..n].copy_from_slice(&self.pattern[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.pattern.len();
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The process's peak resident memory so far (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One measured figure.
pub struct Figure {
    pub name: String,
    pub bytes: u64,
    pub time: Duration,
}

impl Figure {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.time.as_secs_f64()
    }
}

/// Runs [`codec`] and formats its figures as a table.
pub fn codec_report(size: u64, memory_size: u64, params: EncodeParams) -> String {
    let mut out = format!(
        "codec benchmark: {} MiB, {}-of-{}, {} KiB segments, {} threads\n",
        size >> 20,
        params.shape.k,
        params.shape.n,
        params.segment_size >> 10,
        rayon::current_num_threads()
    );
    let (figures, peak) = codec(size, memory_size, params);
    for f in &figures {
        if f.bytes == 0 {
            out += &format!("{:<66} {:>9.1} ms\n", f.name, f.time.as_secs_f64() * 1e3);
        } else {
            out += &format!("{:<66} {:>9.0} MB/s\n", f.name, f.mb_per_s());
        }
    }
    out += &match peak {
        Some(p) => format!("peak memory (VmHWM) encoding {} MiB: {} MiB\n", memory_size >> 20, p >> 20),
        None => "peak memory: unavailable (no /proc/self/status)\n".into(),
    };
    out
}

fn timed(name: impl Into<String>, bytes: u64, f: impl FnOnce()) -> Figure {
    let t = Instant::now();
    f();
    Figure { name: name.into(), bytes, time: t.elapsed() }
}

/// Encodes `size` bytes, keeping the shards of the first `keep` segments.
fn encode_pipeline(size: u64, params: EncodeParams, keep: usize) -> (Vec<(SegmentEntry, Vec<Bytes>)>, Manifest) {
    let mut enc = Encoder::new(PatternReader::new(size), b"bench", params, Salt([1; 16])).expect("valid params");
    let mut kept = Vec::new();
    while let Some(seg) = enc.next_segment().expect("in-memory input") {
        if kept.len() < keep {
            kept.push((seg.entry(), (0..seg.shard_count()).map(|i| seg.shard(i)).collect()));
        }
    }
    let manifest = enc.finish(&FileMeta { name: "bench".into(), content_type: String::new() }).expect("fits");
    (kept, manifest)
}

/// Segments kept from the encode run to decode repeatedly (memory stays bounded).
const DECODE_SEGMENTS: usize = 16;

/// Runs every codec measurement over `size` bytes; the encode of `memory_size` bytes runs
/// first so its peak memory is the process's.
pub fn codec(size: u64, memory_size: u64, params: EncodeParams) -> (Vec<Figure>, Option<u64>) {
    let seg = params.segment_size as usize;
    let shape = params.shape;
    let segments = size.div_ceil(seg as u64);
    let mut figs = Vec::new();

    figs.push(timed(format!("encode pipeline, {} MiB (memory run)", memory_size >> 20), memory_size, || {
        encode_pipeline(memory_size, params, 0);
    }));
    let peak = peak_rss();

    let mut kdf_keys = None;
    let kdf = timed(format!("PBKDF2 {} iterations + HKDF (ms, not MB/s)", params.iterations), 0, || {
        kdf_keys = Some(FileKeys::derive(b"bench", Salt([2; 16]), params.iterations).expect("valid"));
    });
    let keys = kdf_keys.expect("derived");
    figs.push(kdf);

    let mut buf = vec![7u8; seg];
    figs.push(timed("AES-256-GCM seal", size, || {
        for i in 0..segments {
            keys.seal_segment(i as u32, false, &mut buf);
        }
    }));

    let shard_len = shape.shard_len(seg);
    let data = vec![3u8; shape.k() * shard_len];
    let mut rs = erasure::Encoder::new(shape);
    let mut recovery = rs.recovery(&data, shard_len);
    figs.push(timed(format!("Reed-Solomon encode {}-of-{}", shape.k, shape.n), size, || {
        for _ in 0..segments {
            recovery = rs.recovery(&data, shard_len);
        }
    }));

    let all: Vec<&[u8]> = data.chunks_exact(shard_len).chain(recovery.chunks_exact(shard_len)).collect();
    figs.push(timed(format!("BLAKE3 ids of all {} shards (all cores)", shape.n), size, || {
        for _ in 0..segments {
            shard_ids(&all);
        }
    }));

    let mut encoded = None;
    figs.push(timed("encode pipeline (read, seal, RS, ids)", size, || {
        encoded = Some(encode_pipeline(size, params, DECODE_SEGMENTS))
    }));
    let (kept, manifest) = encoded.expect("encoded");

    // Decode the kept segments again and again: from the k data shards, then from recovery
    // shards only (every data shard lost, full Reed-Solomon decoding).
    let decoder = Decoder::new(manifest, b"bench").expect("right password");
    let kept_bytes: u64 = kept.len() as u64 * (seg as u64 - 16);
    let rounds = size.div_ceil(kept_bytes.max(1));
    for (label, first) in [
        ("decode pipeline, k data shards (verify, join, open)", 0),
        ("decode pipeline, recovery shards only (verify, RS decode, open)", shape.k()),
    ] {
        let rounds = if first == 0 { rounds } else { rounds.div_ceil(4) };
        figs.push(timed(label, rounds * kept_bytes, || {
            for _ in 0..rounds {
                for (i, (entry, shards)) in kept.iter().enumerate() {
                    let m = decoder.manifest();
                    let v: Vec<_> = (first..first + shape.k())
                        .map(|j| m.verify_shard(i as u32, entry, j, shards[j].clone()).expect("intact"))
                        .collect();
                    decoder.decode_segment(i as u32, &v).expect("decodes");
                }
            }
        }));
    }
    (figs, peak)
}

/// CPU seconds a process has used (user + system), from /proc/<pid>/stat ("self" for us).
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// A counter of /proc/<pid>/io: bytes a process made storage read or write.
fn io_bytes(pid: &str, counter: &str) -> f64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let line = io.lines().find_map(|l| l.strip_prefix(counter)?.strip_prefix(':'));
    line.and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

fn disk_read(pid: &str) -> f64 {
    io_bytes(pid, "read_bytes")
}

fn disk_written(pid: &str) -> f64 {
    io_bytes(pid, "write_bytes")
}

/// What each role has used so far: CPU seconds, bytes read from and written to disk.
#[derive(Clone, Copy)]
struct Usage {
    at: Instant,
    cpu: [f64; 3],
    read: [f64; 3],
    written: [f64; 3],
}

/// Child processes killed when dropped, so a failed benchmark leaves nothing running.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Children {
    /// Usage of the client (this process), the coordinator (the first child) and the nodes.
    fn usage(&self) -> Usage {
        let pids: Vec<String> = self.0.iter().map(|c| c.id().to_string()).collect();
        let sum = |f: fn(&str) -> f64| [f("self"), f(&pids[0]), pids[1..].iter().map(|p| f(p)).sum()];
        Usage { at: Instant::now(), cpu: sum(cpu_seconds), read: sum(disk_read), written: sum(disk_written) }
    }
}

/// `n` distinct ports free right now: all are held until all are chosen, so the OS cannot
/// hand out one of them twice.
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// This binary as a coordinator process and `nodes` node processes on free ports, all
/// registered; returns the processes (killed when dropped) and the coordinator's URL.
async fn start_processes(nodes: usize, dir: &std::path::Path, tls: bool) -> anyhow::Result<(Children, String)> {
    use anyhow::Context;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().context("finding the p2pstore executable")?;
    let ports = free_ports(nodes + 1)?;
    let mut tls_args: Vec<String> = Vec::new();
    if tls {
        let ca = crate::net::tls::local_ca(&dir.join("tls"))?;
        crate::net::tls::trust_ca_file(&ca.ca)?;
        for (flag, path) in [("--tls-cert", &ca.cert), ("--tls-key", &ca.key), ("--tls-ca", &ca.ca)] {
            tls_args.extend([flag.to_string(), path.display().to_string()]);
        }
    }
    let url = format!("{}://127.0.0.1:{}", if tls { "https" } else { "http" }, ports[0]);
    let spawn = |args: &[&str]| {
        Command::new(&exe)
            .args(["--coordinator", &url, "-q"])
            .args(&tls_args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a benchmark process")
    };
    let d = |name: String| dir.join(name).display().to_string();
    let mut children = Children(vec![spawn(&[
        "coordinator",
        "--port",
        &ports[0].to_string(),
        "--data-dir",
        &d("coordinator".into()),
    ])?]);
    // Nodes retry registration until the coordinator listens; wait until all are online.
    for i in 0..nodes {
        let port = ports[i + 1].to_string();
        let data = d(format!("node-{i:02}"));
        children.0.push(spawn(&["node", "--port", &port, "--max-storage-gb", "1000000", "--data-dir", &data])?);
    }
    let client = crate::client::Client::with_fresh_account(&url);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.peers().await.map(|p| p.len()).unwrap_or(0) < nodes {
        anyhow::ensure!(Instant::now() < deadline, "the benchmark network did not come up within 60 s");
        if let Some(status) = children.0.iter_mut().find_map(|c| c.try_wait().ok().flatten()) {
            anyhow::bail!("a benchmark process exited during start-up ({status})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((children, url))
}

/// One line of the network report: throughput and what each role spent between two usages.
fn usage_line(name: &str, size: u64, before: Usage, after: Usage) -> String {
    let secs = (after.at - before.at).as_secs_f64();
    let cpu = |i: usize| after.cpu[i] - before.cpu[i];
    let gb = |i: usize| {
        let [r, w] = [(after.read[i] - before.read[i]), (after.written[i] - before.written[i])];
        format!("{:.2}/{:.2}", r / 1e9, w / 1e9)
    };
    format!(
        "{name:<9} {:>6.0} MB/s  ({secs:.2} s; CPU-s: client {:.1}, nodes {:.1}, coordinator {:.2}; \
         disk GB read/written: client {}, nodes {})\n",
        size as f64 / 1e6 / secs,
        cpu(0),
        cpu(2),
        cpu(1),
        gb(0),
        gb(2),
    )
}

/// Uploads and downloads a `size`-byte file through a local network of real processes (this
/// binary as coordinator and `nodes` nodes), with this process as the client, so client
/// memory and each role's CPU are measured apart.
pub async fn network(
    size: u64,
    nodes: usize,
    dir: &std::path::Path,
    params: EncodeParams,
    tls: bool,
) -> anyhow::Result<String> {
    let (children, url) = start_processes(nodes, dir, tls).await?;
    let client = crate::client::Client::with_fresh_account(&url);
    let src = dir.join("input.bin");
    let mut input = std::fs::File::create(&src)?;
    std::io::copy(&mut PatternReader::new(size), &mut input)?;
    input.sync_all()?; // its writeback must not run during the upload being measured
    drop(input);
    let mut out = format!(
        "network benchmark: {} MiB, {nodes} node processes + a coordinator process, {}-of-{}, {} MiB segments{}\n",
        size >> 20,
        params.shape.k,
        params.shape.n,
        params.segment_size >> 20,
        if tls { ", HTTPS" } else { "" }
    );
    let before = children.usage();
    let id = client.upload(&src, b"bench", params, None).await?;
    out += &usage_line("upload", size, before, children.usage());
    let dst = dir.join("output.bin");
    let before = children.usage();
    client.download(&id, b"bench", Some(&dst), true, None).await?;
    out += &usage_line("download", size, before, children.usage());
    let peak = peak_rss();
    let t = Instant::now();
    encode_pipeline(size.min(256 << 20), params, 0);
    out += &format!(
        "codec encode pipeline alone, same run: {:.0} MB/s\n",
        size.min(256 << 20) as f64 / 1e6 / t.elapsed().as_secs_f64()
    );
    if let Some(p) = peak {
        out += &format!("client peak memory (VmHWM): {} MiB\n", p >> 20);
    }
    drop(children);
    std::fs::remove_file(&src)?;
    std::fs::remove_file(&dst)?;
    Ok(out)
}

/// The reputation table of the README: how many audits it takes the beta score to disqualify
/// nodes that lose a share of their chunks, and that honest-but-unlucky nodes survive.
pub fn reputation_report(threshold: f64) -> String {
    use crate::core::reputation::simulate;
    let items = crate::coordinator::AUDIT_ITEMS;
    let cases = [(0.10, 10_000, 1_000), (0.01, 3_000, 30_000), (0.001, 3_000, 100_000)];
    let mut out =
        format!("disqualify below {threshold}, {items} chunks per audit, decay {}\n", crate::core::reputation::LAMBDA);
    for (p, nodes, audits) in cases {
        let s = simulate(p, nodes, audits, items, threshold, 0x9e37_79b9_7f4a_7c15);
        let when = |a: Option<usize>| a.map_or("-".to_string(), |a| a.to_string());
        out += &format!(
            "{:>5.1}% of chunks fail, {nodes} nodes, {audits} audits each: {} disqualified; median after {} audits, 99% within {}\n",
            p * 100.0,
            s.disqualified,
            when(s.median),
            when(s.p99)
        );
    }
    out
}
