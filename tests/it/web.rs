//! The web UI's assets and API, monitoring endpoints, and the browser-side crypto.

use p2pstore::http::Client;

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
    let stats: p2pstore::proto::NetworkStats = h.get(&format!("{base}/v1/stats")).await.unwrap().json().unwrap();
    assert_eq!((stats.peers_online, stats.files, stats.stored_bytes), (4, 1, bytes.len() as u64));
    assert_eq!(stats.health, vec![(4, 3)], "three segments with all four shards healthy");
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
    assert!(text.contains("route=\"/v1/uploads/:id/commit\""), "{text}");
    assert!(text.contains("p2pstore_coordinator_network{state=\"online\",what=\"peers\"} 4"), "{text}");
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
