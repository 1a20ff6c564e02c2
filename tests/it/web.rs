//! The web UI's assets and API, monitoring endpoints, and the browser-side crypto.

use p2pstore::net::client::Client;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_assets_api_and_metrics() {
    let c = Cluster::start_with(4, fast_config()).await;
    let h = Client::default();
    let base = c.net.url();
    let page = h.get(&format!("{base}/")).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("/app.js"));
    for file in ["app.js", "crypto.js", "style.css", "index.html"] {
        let r = h.get(&format!("{base}/{file}")).await.unwrap();
        assert_eq!(r.status, 200, "{file}");
        assert!(!r.body.is_empty());
    }
    assert_eq!(h.get(&format!("{base}/nope.js")).await.unwrap().status, 404);

    let bytes = data(3 * PER_SEGMENT, 5);
    let id = c.client.upload(&c.write("w", &bytes), b"pw", params(2, 4), None).await.unwrap();
    let stats: p2pstore::proto::NetworkStats = h.get(&format!("{base}/v2/stats")).await.unwrap().json().unwrap();
    assert_eq!((stats.peers_online, stats.files, stats.stored_bytes), (4, 1, bytes.len() as u64));
    assert_eq!(stats.health, vec![(4, 3)], "three segments with all four shards healthy");
    // The histogram is kept between requests (it walks every segment), never past a change.
    let again: p2pstore::proto::NetworkStats = h.get(&format!("{base}/v2/stats")).await.unwrap().json().unwrap();
    assert_eq!(again.health, stats.health);
    c.client.upload(&c.write("w2", &data(PER_SEGMENT, 6)), b"pw", params(2, 4), None).await.unwrap();
    let after: p2pstore::proto::NetworkStats = h.get(&format!("{base}/v2/stats")).await.unwrap().json().unwrap();
    assert_eq!((after.files, after.health.clone()), (2, vec![(4, 4)]), "the new file's segment counted at once");
    let view = c.client.info(&id).await.unwrap();
    assert_eq!(view.shard_states.len(), 3);
    assert!(view.shard_states.iter().flatten().all(|s| *s == p2pstore::proto::ShardState::Healthy));

    // Audits happen (1 s interval) and show in the API and the metrics.
    until("audits recorded", 30, || async { !c.client.audits(None, 10).await.unwrap().is_empty() }).await;
    let metrics = |url: String| {
        let h = h.clone();
        async move {
            let r = h.get(&format!("{url}/metrics")).await.unwrap();
            assert_eq!(r.status, 200);
            let text = String::from_utf8(r.body.to_vec()).unwrap();
            let lines = text.lines().map(|l| Ok(l.to_owned()));
            let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
            (text, scrape)
        }
    };
    let (text, scrape) = metrics(base.clone()).await;
    assert!(!scrape.samples.is_empty());
    assert!(text.contains("p2pstore_coordinator_audits_total{outcome=\"success\"}"), "{text}");
    assert!(text.contains("route=\"/v2/uploads/:id/commit\""), "{text}");
    assert!(text.contains("p2pstore_coordinator_peers{state=\"online\"} 4"), "{text}");
    assert!(text.contains("p2pstore_coordinator_capacity_bytes "), "{text}");
    assert!(text.contains("p2pstore_coordinator_process_resident_memory_bytes "), "{text}");
    let node = c.client.peers().await.unwrap()[0].address.clone();
    let (text, _) = metrics(node.clone()).await;
    let stored: f64 = text
        .lines()
        .find(|l| l.starts_with("p2pstore_node_shard_bytes_in_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    assert!(stored > 0.0, "{text}");
    for url in [&base, &node] {
        assert_eq!(h.get(&format!("{url}/healthz")).await.unwrap().status, 200);
    }
    c.net.shutdown().await;
}

/// The browser's crypto.js opens the sealed metadata of the known-answer vectors exactly as
/// the Rust codec sealed it (run with Node.js's WebCrypto).
#[test]
fn browser_crypto_agrees_with_the_vectors() {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = format!(
        r#"
const fs = require("fs");
eval(fs.readFileSync("{root}/assets/crypto.js", "utf8") + "; globalThis.P2P = P2P;");
(async () => {{
  for (const f of fs.readdirSync("{root}/tests/vectors").filter((f) => f.endsWith(".json"))) {{
    const v = JSON.parse(fs.readFileSync("{root}/tests/vectors/" + f, "utf8"));
    const buf = Uint8Array.from(Buffer.from(v.expected.manifest, "hex")).buffer;
    const meta = await P2P.openMetadata(buf, v.password);
    if (meta.name !== v.name || meta.content_type !== v.content_type) throw new Error(f + ": got " + JSON.stringify(meta));
    let refused = false;
    try {{ await P2P.openMetadata(buf, v.password + "x"); }} catch (_) {{ refused = true; }}
    if (!refused) throw new Error(f + ": a wrong password opened the metadata");
    const m = P2P.parseManifest(buf);
    if (m.k !== v.k || m.n !== v.n || m.size !== v.input_len) throw new Error(f + ": header differs");
    // Sealing in the page gives the Rust codec's bytes: segments, metadata, owner token.
    const keys = await P2P.fileKeys(v.password, Uint8Array.from(Buffer.from(v.salt, "hex")), v.iterations);
    const input = Uint8Array.from({{ length: v.input_len }}, (_, i) => (i * 7 + 3) % 256);
    const count = P2P.segmentCount(v.input_len, v.segment_size), per = P2P.plainPerSegment(v.segment_size);
    for (let i = 0; i < count; i++) {{
      const sealed = await P2P.sealSegment(keys, i, i === count - 1, input.slice(i * per, (i + 1) * per));
      if (await P2P.sha256hex(sealed) !== v.expected.sealed_segments_sha256[i]) throw new Error(f + ": segment " + i + " differs");
      const opened = await P2P.openSegment(keys, i, i === count - 1, sealed);
      if (Buffer.compare(Buffer.from(opened), Buffer.from(input.slice(i * per, (i + 1) * per))) !== 0) throw new Error(f + ": open differs");
    }}
    const sealedMeta = await P2P.sealMetadata(keys, {{ name: v.name, content_type: v.content_type }});
    if (P2P.hex(sealedMeta) !== P2P.hex(m.sealedMeta)) throw new Error(f + ": sealed metadata differs");
    if (P2P.hex(keys.owner) !== v.expected.owner_token) throw new Error(f + ": owner token differs");
    // A manifest is used only under the id it hashes to, and only when well-formed with an
    // iteration count within the format's bounds: no key is derived otherwise.
    const checked = await P2P.verifiedManifest(buf, v.expected.file_id);
    if (checked.segments !== count || P2P.hex(checked.salt) !== v.salt) throw new Error(f + ": verified manifest differs");
    const refuses = async (what, p) => {{
      let refused = false;
      try {{ await p(); }} catch (_) {{ refused = true; }}
      if (!refused) throw new Error(f + ": accepted " + what);
    }};
    await refuses("another id", () => P2P.verifiedManifest(buf, "00".repeat(32)));
    const bytes = new Uint8Array(buf);
    for (const c of [99999, 50000001, 0, 0xffffffff]) {{
      const patched = bytes.slice();
      new DataView(patched.buffer).setUint32(21, c);
      await refuses(c + " iterations", () => P2P.parseManifest(patched.buffer));
      await refuses(c + " iterations, under its own id", async () => P2P.verifiedManifest(patched.buffer, await P2P.sha256hex(patched)));
      await refuses(c + " iterations to derive", () => P2P.fileKeys(v.password, keys.salt, c));
    }}
    const trailing = new Uint8Array(bytes.length + 1);
    trailing.set(bytes);
    await refuses("a trailing byte", () => P2P.parseManifest(trailing.buffer));
    await refuses("a truncated manifest", () => P2P.parseManifest(bytes.slice(0, bytes.length - 1).buffer));
  }}
  console.log("vectors ok");
}})().catch((e) => {{ console.error(e); process.exit(1); }});
"#
    );
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .output()
        .expect("Node.js runs the browser crypto against the vectors (installed on every machine of this kind)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vectors ok"));
}

/// The browser's upload and download path, driven here with the Rust codec's crypto playing
/// the page: what the coordinator stores downloads with the CLI byte-identical, and a CLI
/// upload comes back segment by segment, still sealed, for the page to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_upload_and_download_endpoints() {
    use p2pstore::core::crypto::{FileKeys, MIN_ITERATIONS, Salt};
    use p2pstore::core::manifest::{FileMeta, plain_per_segment, segment_count};
    let c = Cluster::start(5).await;
    // The page signs its requests with its own account, as the CLI does.
    let page = &c.client;
    let post = |path: String, body: serde_json::Value| async move {
        page.send_signed("POST", &path, bytes::Bytes::from(serde_json::to_vec(&body).unwrap())).await.unwrap()
    };
    let data = data(3 * PER_SEGMENT + 77, 9);
    let size = data.len() as u64;
    let plan = serde_json::json!({ "size": size, "k": 3, "n": 5, "segment_size": SEGMENT });
    let started: serde_json::Value = post("/v2/browser/uploads".into(), plan).await.json().unwrap();
    let up = started["upload_id"].as_str().unwrap().to_owned();
    let salt = Salt::random();
    let keys = FileKeys::derive(b"browser pw", salt, MIN_ITERATIONS).unwrap();
    let count = segment_count(size, SEGMENT) as usize;
    let per = plain_per_segment(SEGMENT) as usize;
    let put = |i: usize, body: Vec<u8>| {
        let path = format!("/v2/browser/uploads/{up}/segments/{i}");
        async move { page.send_signed("PUT", &path, bytes::Bytes::from(body)).await.unwrap() }
    };
    // A committed-before-complete upload and a wrong-sized segment are refused.
    let early: serde_json::Value = serde_json::json!({"salt": hex::encode(salt.0), "iterations": MIN_ITERATIONS, "sealed_meta": "00", "owner_hash": "00"});
    assert_eq!(post(format!("/v2/browser/uploads/{up}/commit"), early).await.status, 400);
    // Another account cannot send this upload's segments, and nobody can unsigned.
    let other = c.other_client();
    let r = other.send_signed("PUT", &format!("/v2/browser/uploads/{up}/segments/0"), vec![1u8; 10].into()).await;
    assert_eq!(r.unwrap().status, 403);
    let unsigned = Client::default();
    let url = format!("{}/v2/browser/uploads/{up}/segments/0", c.net.url());
    let r = unsigned.send(p2pstore::net::client::request("PUT", &url, &[], vec![1u8; 10].into()).unwrap()).await;
    assert_eq!(r.unwrap().status, 401);
    assert_eq!(put(0, vec![1, 2, 3]).await.status, 400);
    for i in 0..count {
        let mut seg = data[i * per..((i + 1) * per).min(data.len())].to_vec();
        seg.resize(seg.len() + p2pstore::core::crypto::TAG_LEN, 0);
        keys.seal_segment(i as u32, i + 1 == count, &mut seg);
        assert_eq!(put(i, seg).await.status, 200);
    }
    let meta = FileMeta { name: "from-browser.bin".into(), content_type: "application/x-test".into() };
    let sealed_meta = keys.seal_metadata(&serde_json::to_vec(&meta).unwrap());
    let owner = ring::digest::digest(&ring::digest::SHA256, &keys.owner_token());
    let commit = serde_json::json!({
        "salt": hex::encode(salt.0), "iterations": MIN_ITERATIONS,
        "sealed_meta": hex::encode(sealed_meta), "owner_hash": hex::encode(owner),
    });
    let done: p2pstore::proto::CommitReply =
        post(format!("/v2/browser/uploads/{up}/commit"), commit).await.json().unwrap();
    let id = p2pstore::core::manifest::FileId::parse(&done.file_id).unwrap();
    let out = c.path("from-browser.out");
    c.client.download(&id, b"browser pw", Some(&out), false, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data, "the CLI reads a browser upload byte-identical");
    c.client.remove(&id, b"browser pw").await.unwrap(); // the owner token the page derived works

    // The other way: a CLI upload, fetched as sealed segments and opened as the page would.
    let cli = c.client.upload(&c.write("cli.bin", &data), b"cli pw", params(3, 5), None).await.unwrap();
    let m = c.client.manifest(&cli).await.unwrap();
    let keys = FileKeys::derive(b"cli pw", m.salt, m.iterations).unwrap();
    let mut back: Vec<u8> = Vec::new();
    for i in 0..m.segment_count() as usize {
        let r = page.send_signed("GET", &format!("/v2/files/{cli}/segments/{i}"), bytes::Bytes::new()).await.unwrap();
        assert_eq!(r.status, 200);
        let mut seg = r.body.to_vec();
        let len = keys.open_segment(i as u32, i + 1 == m.segment_count() as usize, &mut seg).unwrap();
        back.extend(&seg[..len]);
    }
    assert!(back == data);
    let r = page.send_signed("GET", &format!("/v2/files/{cli}/segments/99"), bytes::Bytes::new()).await.unwrap();
    assert_eq!(r.status, 404);
    c.net.shutdown().await;
}
