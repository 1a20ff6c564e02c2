//! Stored records that cannot be read are errors, never absences: garbage collection does not
//! delete what a damaged file record names, and a damaged peer record does not let a
//! disqualified peer register afresh.

use crate::harness::*;
use p2pstore::proto::*;

/// Overwrites the record `key` of the coordinator's table `tree` with bytes that do not decode.
fn damage(c: &Cluster, tree: &str, key: &str) {
    let db = sled::open(c.net.dir.join("coordinator").join("db")).unwrap();
    db.open_tree(tree).unwrap().insert(key, b"{\"damaged".to_vec()).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_record_stops_garbage_collection_instead_of_deleting() {
    let mut c = Cluster::start_with(4, fast_config()).await;
    let bytes = data(3 * PER_SEGMENT, 5);
    let damaged = c.client.upload(&c.write("a", &bytes), b"pw", params(2, 4), None).await.unwrap();
    let kept = c.client.upload(&c.write("b", &bytes[..1000]), b"pw", params(2, 4), None).await.unwrap();
    let before: Vec<usize> = (0..4).map(|i| shard_files(&c.net.node_dir(i))).collect();
    c.net.stop_coordinator().await;
    damage(&c, "files", &damaged.to_string());
    c.net.start_coordinator().await.unwrap();
    let url = c.net.url();
    let skipped = "p2pstore_coordinator_worker_rounds_total{outcome=\"skipped\",worker=\"gc\"}";
    until("two collection rounds skipped", 30, || async { metric(&url, skipped).await >= 2.0 }).await;
    let after: Vec<usize> = (0..4).map(|i| shard_files(&c.net.node_dir(i))).collect();
    assert_eq!(before, after, "no node deleted a shard");
    let undecodable = "p2pstore_coordinator_undecodable_record_reads{table=\"files\"}";
    assert!(metric(&url, undecodable).await >= 1.0, "the damage shows in /metrics");
    // The other file is untouched; the damaged one is an error, not "no such file".
    downloads(&c, &kept, &bytes[..1000]).await;
    let e = c.client.info(&damaged).await.unwrap_err().to_string();
    assert!(e.contains("cannot be read") && e.contains("coordinator check"), "{e}");
    let coordinator_dir = c.net.dir.join("coordinator");
    c.net.shutdown().await;

    // `p2pstore coordinator check` lists the record and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pstore"))
        .args(["coordinator", "--data-dir"])
        .arg(&coordinator_dir)
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains(&damaged.to_string()) && text.contains("1 unreadable"), "{text}");
}

async fn downloads(c: &Cluster, id: &p2pstore::core::manifest::FileId, bytes: &[u8]) {
    let out = c.path(&format!("{id}.out"));
    c.client.download(id, b"pw", Some(&out), true, None).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_peer_record_does_not_let_a_disqualified_peer_back() {
    let mut c = Cluster::start_with(5, fast_config()).await;
    let peer = c.client.peers().await.unwrap()[0].peer_id.clone();
    c.net.stop_coordinator().await;
    {
        // Disqualify it, as the audit worker would, then damage the record.
        let db = sled::open(c.net.dir.join("coordinator").join("db")).unwrap();
        let tree = db.open_tree("peers").unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&tree.get(&peer).unwrap().unwrap()).unwrap();
        v["r"]["status"] = "disqualified".into();
        tree.insert(&peer, serde_json::to_vec(&v).unwrap()).unwrap();
        db.flush().unwrap();
    }
    c.net.start_coordinator().await.unwrap();
    let status = |peers: Vec<PeerView>| peers.into_iter().find(|p| p.peer_id == peer).map(|p| p.status);
    assert_eq!(status(c.client.peers().await.unwrap()), Some(PeerStatus::Disqualified));
    c.net.stop_coordinator().await;
    damage(&c, "peers", &peer);
    c.net.start_coordinator().await.unwrap();
    // Its heartbeats keep coming (every second) and are refused; it is never re-registered.
    let url = c.net.url();
    let refused = "p2pstore_coordinator_undecodable_record_reads{table=\"peers\"}";
    until("a heartbeat met the damaged record", 30, || async { metric(&url, refused).await >= 2.0 }).await;
    assert_eq!(status(c.client.peers().await.unwrap()), None, "shown as fresh");
    let plan = c.plan(10, 2, 4).await;
    assert!(!plan.orders.contains_key(&peer), "a damaged, disqualified peer was given data");
    c.net.shutdown().await;
}
