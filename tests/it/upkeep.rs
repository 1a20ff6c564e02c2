//! Keeping data alive: audits, reputation, repair, garbage collection, graceful exit.
//! Every interval is one or two seconds (harness::fast_config), so these tests wait on
//! conditions, with deadlines, rather than on fixed sleeps.

use std::collections::HashSet;

use bytes::Bytes;
use p2pstore::core::manifest::FileId;
use p2pstore::proto::*;

use crate::harness::*;

async fn upload(c: &Cluster, name: &str, len: usize, k: u8, n: u8) -> (FileId, Vec<u8>) {
    let bytes = data(len, len as u64);
    let id = c.client.upload(&c.write(name, &bytes), b"pw", params(k, n), None).await.unwrap();
    (id, bytes)
}

async fn placed_on(c: &Cluster, id: &FileId, peer: &str) -> usize {
    c.client.info(id).await.unwrap().placements.iter().flatten().filter(|p| *p == peer).count()
}

async fn fully_healthy(c: &Cluster, id: &FileId) -> bool {
    c.client.info(id).await.unwrap().health.iter().all(|h| h.healthy == h.total)
}

/// Waits until repair has moved every shard off `peer` and the file is fully healthy, then
/// checks it downloads byte-identical.
async fn rebuilt_elsewhere(c: &Cluster, id: &FileId, peer: &str, bytes: &[u8], name: &str) {
    until("its shards moved to other peers", 60, || async { placed_on(c, id, peer).await == 0 }).await;
    until("every segment healthy again", 60, || fully_healthy(c, id)).await;
    downloads_intact(c, id, bytes, name).await;
}

async fn status(c: &Cluster, peer: &str) -> PeerStatus {
    c.client.peers().await.unwrap().into_iter().find(|p| p.peer_id == peer).unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_peers_pass_audits_and_get_vetted() {
    let c = Cluster::start_with(6, fast_config()).await;
    upload(&c, "a", 3 * PER_SEGMENT, 3, 6).await;
    until("every peer vetted", 30, || async {
        c.client.peers().await.unwrap().iter().all(|p| p.status == PeerStatus::Active && p.reputation > 0.99)
    })
    .await;
    let audits = c.client.audits(None, 500).await.unwrap();
    assert!(audits.iter().any(|a| a.outcome == AuditOutcome::Success));
    assert!(audits.iter().all(|a| a.outcome == AuditOutcome::Success), "{audits:?}");
    let one = &c.client.peers().await.unwrap()[0].peer_id;
    assert!(c.client.audits(Some(one), 500).await.unwrap().iter().all(|a| &a.peer_id == one));
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_deleted_while_audits_run_never_count_against_their_peers() {
    let c = Cluster::start_with(6, fast_config()).await;
    upload(&c, "kept", 3 * PER_SEGMENT, 3, 6).await;
    let mut gone = Vec::new();
    for n in 0..5 {
        gone.push(upload(&c, &format!("gone-{n}"), 4 * PER_SEGMENT, 3, 6).await.0);
    }
    // The audit worker re-reads who holds what at most every 5 s while files change: after
    // this wait its index names the files above, and for seconds after they are deleted
    // its challenges keep naming shards the peers were told to drop.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let deleted_at = c.net.clock.now();
    for id in &gone {
        c.client.remove(id, b"pw").await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let audits = c.client.audits(None, 1000).await.unwrap();
    let after = audits.iter().filter(|a| a.time > deleted_at).count();
    assert!(after >= 10, "audits ran meanwhile: {audits:?}");
    assert!(audits.iter().all(|a| a.outcome != AuditOutcome::Failure), "{audits:?}");
    assert!(c.client.peers().await.unwrap().iter().all(|p| !p.suspended && p.reputation > 0.99));
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheating_peer_is_disqualified_and_its_shards_repaired() {
    let c = Cluster::start_with(8, fast_config()).await;
    // Enough segments that the cheater holds dozens of shards to be caught on.
    let (id, bytes) = upload(&c, "f", 40 * PER_SEGMENT, 3, 6).await;
    let cheater = c.client.info(&id).await.unwrap().placements[0][0].clone();
    // Corrupt every shard it holds, behind its back, while it keeps running.
    let shards = c.net.node_dir(c.node_of(&cheater)).join("shards");
    for d in std::fs::read_dir(&shards).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            for x in b.iter_mut().step_by(4096) {
                *x ^= 0x55;
            }
            std::fs::write(&p, b).unwrap();
        }
    }
    until("the cheater is disqualified", 90, || async { status(&c, &cheater).await == PeerStatus::Disqualified }).await;
    let rep = c.client.peers().await.unwrap().into_iter().find(|p| p.peer_id == cheater).unwrap().reputation;
    assert!(rep < 0.96, "{rep}");
    assert!(c.client.audits(Some(&cheater), 500).await.unwrap().iter().any(|a| a.outcome == AuditOutcome::Failure));
    rebuilt_elsewhere(&c, &id, &cheater, &bytes, "f.out").await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_heartbeats_lower_the_online_score() {
    let mut c = Cluster::start_with(4, fast_config()).await;
    let peer = c.client.peers().await.unwrap()[0].peer_id.clone();
    let score = |peers: Vec<p2pstore::proto::PeerView>| peers.iter().find(|p| p.peer_id == peer).unwrap().online_score;
    assert!(score(c.client.peers().await.unwrap()) > 0.99);
    c.net.stop_node(c.node_of(&peer)).await;
    // One missed audit a second: 0.9 per miss with the default forgetting.
    until("its online score falls", 30, || async { score(c.client.peers().await.unwrap()) < 0.8 }).await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_outages_are_not_repaired_long_ones_are() {
    // Time is a manual clock: silence is made by moving it, not by waiting for it.
    let mut config = fast_config();
    config.coordinator.heartbeat_timeout = 20;
    config.repair.grace_period = 100;
    let clock = p2pstore::sys::clock::Clock::manual(p2pstore::sys::clock::Clock::system().now());
    let mut c = Cluster::start_with_clock(8, config, clock.clone()).await;
    let (id, bytes) = upload(&c, "g", 2 * PER_SEGMENT, 3, 6).await;
    let peer = c.client.info(&id).await.unwrap().placements[0][1].clone();
    let node = c.node_of(&peer);
    let before = c.client.info(&id).await.unwrap().placements;
    let url = c.net.url();
    let rounds = "p2pstore_coordinator_worker_rounds_total{outcome=\"done\",worker=\"repair\"}";
    let two_more_repair_rounds = || async {
        let start = metric(&url, rounds).await;
        until("two repair rounds", 30, || async { metric(&url, rounds).await >= start + 2.0 }).await;
    };

    // Silent past the heartbeat timeout, within the grace period: offline, not repaired.
    c.net.stop_node(node).await;
    clock.advance(50);
    let state = |peers: Vec<PeerView>| peers.into_iter().find(|p| p.peer_id == peer).unwrap().state;
    assert_eq!(state(c.client.peers().await.unwrap()), PeerState::Offline);
    two_more_repair_rounds().await;
    assert_eq!(c.client.info(&id).await.unwrap().placements, before, "repaired within the grace period");
    c.net.start_node(node).await.unwrap();
    until("the peer is back", 10, || async { state(c.client.peers().await.unwrap()) == PeerState::Online }).await;
    two_more_repair_rounds().await;
    assert_eq!(c.client.info(&id).await.unwrap().placements, before, "repaired after the peer came back");

    // Silent past the grace period: its shards are rebuilt elsewhere.
    c.net.stop_node(node).await;
    clock.advance(200);
    rebuilt_elsewhere(&c, &id, &peer, &bytes, "g.out").await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_and_deleted_files_are_collected() {
    let c = Cluster::start_with(4, fast_config()).await;
    let h = p2pstore::net::client::Client::default();
    // An upload that never commits: one shard stored under a valid order.
    let plan = c.plan(10, 2, 4).await;
    let peer = plan.segments[0][0].clone();
    let body = Bytes::from_static(b"abandoned!");
    let sid = p2pstore::core::merkle::root(&body);
    let hdr = serde_json::to_string(&plan.orders[&peer]).unwrap();
    let url = format!("{}/v2/shards/{sid}", plan.addresses[&peer]);
    let r = h.send(p2pstore::net::client::request("PUT", &url, &[(ORDER_HEADER, &hdr)], body).unwrap()).await.unwrap();
    assert_eq!(r.status, 200);
    // A committed file stays.
    let (id, bytes) = upload(&c, "kept", PER_SEGMENT + 1, 2, 4).await;
    let addr = plan.addresses[&peer].clone();
    until("the abandoned shard is gone", 30, || async { c.get_shard(&addr, &peer, &sid).await.status == 404 }).await;
    downloads_intact(&c, &id, &bytes, "kept.out").await;

    // rm takes the shards off every node (as the nodes report them; into the trash, whose
    // room is freed when it is emptied).
    c.client.remove(&id, b"pw").await.unwrap();
    until("every node reports 0 shards held", 30, || async {
        c.client.peers().await.unwrap().iter().all(|p| p.shards == 0)
    })
    .await;
    c.net.shutdown().await;
}

/// The same file committed again from a second upload (a resumed upload keeps its salt, so
/// its manifest is the same; or an uploader on purpose): the commit answers as a retry, and
/// what the second upload stored is collected like an expired upload's. Before, its copies
/// stayed on the nodes for good, charged to nobody (found by the attacker helper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_committed_again_from_another_upload_leaves_nothing_behind() {
    let mut c = Cluster::start_with(8, fast_config()).await;
    let bytes = data(4 * PER_SEGMENT, 11);
    let secret =
        p2pstore::core::crypto::Secret::stretch(b"pw", p2pstore::core::crypto::Salt([5; 16]), 100_000).unwrap();
    let meta = || p2pstore::core::manifest::FileMeta { name: "same".into(), content_type: String::new() };
    let send = || {
        let r = std::io::Cursor::new(bytes.clone());
        c.client.upload_reader(r, bytes.len() as u64, meta(), secret.clone(), params(2, 4), None)
    };
    let first = send().await.unwrap();
    let dirs: Vec<_> = (0..8).map(|i| c.net.node_dir(i)).collect();
    let held = || dirs.iter().map(|d| shard_files(d)).sum::<usize>();
    let once = held();
    assert_eq!(once, 4 * 4, "four segments of four shards");
    // One holder offline: the second upload places its shards on other peers.
    let holder = c.client.info(&first).await.unwrap().placements[0][0].clone();
    c.net.stop_node(c.node_of(&holder)).await;
    until("the holder is offline", 30, || async {
        c.client.peers().await.unwrap().iter().any(|p| p.peer_id == holder && p.state == PeerState::Offline)
    })
    .await;
    let again = send().await.unwrap();
    assert_eq!(again, first, "the same manifest is the same file");
    // The copies may already be in the trash: the commit abandons the second upload at once.
    let trashed = || dirs.iter().map(|d| std::fs::read_dir(d.join("trash")).unwrap().count()).sum::<usize>();
    assert!(held() + trashed() > once, "the second upload stored copies elsewhere");
    until("the second upload's copies are collected", 30, || async { held() == once }).await;
    assert_eq!(c.client.account().await.unwrap().files, 1);
    c.net.start_node(c.node_of(&holder)).await.unwrap();
    downloads_intact(&c, &first, &bytes, "same.out").await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_exit_moves_every_shard_first() {
    let mut c = Cluster::start_with(8, fast_config()).await;
    let (id, bytes) = upload(&c, "x", 3 * PER_SEGMENT, 3, 6).await;
    let leaver = c.client.info(&id).await.unwrap().placements[0][2].clone();
    let node = c.node_of(&leaver);
    let me = p2pstore::node::request_exit(&c.net.node_dir(node), &c.net.url(), &c.net.clock).await.unwrap();
    assert_eq!(me.status, PeerStatus::Exiting);
    until("the peer has exited", 60, || async { status(&c, &leaver).await == PeerStatus::Exited }).await;
    assert_eq!(placed_on(&c, &id, &leaver).await, 0);
    assert!(fully_healthy(&c, &id).await, "no segment lost redundancy");
    c.net.stop_node(node).await;
    downloads_intact(&c, &id, &bytes, "x.out").await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_during_repair_leaves_no_dangling_placement() {
    let mut c = Cluster::start_with(8, fast_config()).await;
    let (id, bytes) = upload(&c, "r", 6 * PER_SEGMENT, 3, 6).await;
    let gone = c.client.info(&id).await.unwrap().placements[0][0].clone();
    c.net.stop_node(c.node_of(&gone)).await;
    until("repair has started", 30, || async {
        c.client.info(&id).await.unwrap().health.iter().any(|h| h.repair_queued) || placed_on(&c, &id, &gone).await < 6
    })
    .await;
    c.net.stop_coordinator().await;
    c.net.start_coordinator().await.unwrap();
    until("repair completes after the restart", 60, || async { placed_on(&c, &id, &gone).await == 0 }).await;
    // Every placement points at a peer that really holds the shard.
    let view = c.client.info(&id).await.unwrap();
    let m = c.client.manifest(&id).await.unwrap();
    let segs = c.client.segments(&id).await.unwrap();
    for (seg, peers) in view.placements.iter().enumerate() {
        for (j, peer) in peers.iter().enumerate() {
            let sid = segs[seg].shard_ids[j];
            let r = c.get_shard(&view.peers[peer].address, peer, &sid).await;
            assert_eq!(r.status, 200, "segment {seg} shard {j} on {peer}");
            assert!(m.verify_shard(seg as u32, &segs[seg], j, r.body).is_ok());
        }
    }
    downloads_intact(&c, &id, &bytes, "r.out").await;
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_thirty_nodes_lose_eighteen() {
    let mut config = fast_config();
    config.repair.grace_period = 0;
    let mut c = Cluster::start_with(30, config).await;
    let mut files = Vec::new();
    for (i, len) in [PER_SEGMENT / 3, PER_SEGMENT + 5, 5 * PER_SEGMENT / 2].into_iter().enumerate() {
        files.push(upload(&c, &format!("churn{i}"), len, 4, 10).await);
    }
    let mut stopped = HashSet::new();
    for round in 0..18 {
        // Stop a node that holds shards, when there is one.
        let view = c.client.info(&files[round % files.len()].0).await.unwrap();
        let holder = view.placements.iter().flatten().map(|p| c.node_of(p)).find(|i| !stopped.contains(i));
        let victim = holder.unwrap_or_else(|| (0..30).find(|i| !stopped.contains(i)).unwrap());
        let victim_id = p2pstore::store::identity::load_or_create(&c.net.node_dir(victim)).unwrap().peer_id();
        c.net.stop_node(victim).await;
        stopped.insert(victim);
        until("the coordinator sees the node gone", 30, || async {
            c.client.peers().await.unwrap().iter().any(|p| p.peer_id == victim_id && p.state == PeerState::Offline)
        })
        .await;
        // Let repair bring every segment back above the threshold (k + 4 = 8 of 10).
        until(&format!("repair after stop {}", round + 1), 60, || async {
            let mut ok = true;
            for (id, _) in &files {
                ok &= c.client.info(id).await.unwrap().health.iter().all(|h| h.healthy > 8);
            }
            ok
        })
        .await;
    }
    for (i, (id, bytes)) in files.iter().enumerate() {
        downloads_intact(&c, id, bytes, &format!("churn{i}.out")).await;
    }
    c.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrubbing_finds_damage_and_repair_follows_without_an_audit_failure() {
    scrub_and_repair(false).await;
}

/// A report that could not be sent (the coordinator was away) is sent again when it is back:
/// the shard is gone from the node by then, so nothing else would tell of it but an audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_found_while_the_coordinator_is_away_is_reported_when_it_is_back() {
    scrub_and_repair(true).await;
}

async fn scrub_and_repair(coordinator_away: bool) {
    let mut config = fast_config();
    config.node.scrub_interval = 2;
    config.audit.interval = 3600; // no audit finds it first
    let mut c = Cluster::start_with(8, config).await;
    let (id, bytes) = upload(&c, "s", 2 * PER_SEGMENT, 3, 6).await;
    let view = c.client.info(&id).await.unwrap();
    let m = c.client.segments(&id).await.unwrap();
    let holder = view.placements[0][0].clone();
    if coordinator_away {
        c.net.stop_coordinator().await;
    }
    // Flip a byte of one shard on disk, behind the node's back.
    let file = p2pstore::store::shards::shard_file(&c.net.node_dir(c.node_of(&holder)), &m[0].shard_ids[0]);
    let mut b = std::fs::read(&file).unwrap();
    b[0] ^= 1;
    std::fs::write(&file, b).unwrap();
    if coordinator_away {
        until("the node has dropped the damaged shard", 30, || async { !file.exists() }).await;
        c.net.start_coordinator().await.unwrap();
    }
    until("the damaged shard is rebuilt elsewhere", 60, || async {
        c.client.info(&id).await.unwrap().placements[0][0] != holder
    })
    .await;
    downloads_intact(&c, &id, &bytes, "s.out").await;
    let audits = c.client.audits(Some(&holder), 100).await.unwrap();
    assert!(
        audits.iter().all(|a| a.outcome != AuditOutcome::Failure),
        "reporting its own damage is no failure: {audits:?}"
    );
    let me = c.client.peers().await.unwrap().into_iter().find(|p| p.peer_id == holder).unwrap();
    assert_eq!(me.reputation, 1.0);
    c.net.shutdown().await;
}

/// A node's trash takes room until it is emptied, and its heartbeats say so: a coordinator
/// that counted only the shards held placed new ones on nodes whose trash filled them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trash_counts_as_used_until_it_is_emptied() {
    let c = Cluster::start_with(4, fast_config()).await;
    let (id, _) = upload(&c, "t", 2 * PER_SEGMENT, 2, 4).await;
    let used = || async { c.client.peers().await.unwrap().iter().map(|p| p.used).sum::<u64>() };
    let shards = || async { c.client.peers().await.unwrap().iter().map(|p| p.shards).sum::<u64>() };
    until("heartbeats count the shards", 30, || async { shards().await == 2 * 4 }).await;
    let before = used().await;
    c.client.remove(&id, b"pw").await.unwrap();
    until("heartbeats say the shards are gone", 30, || async { shards().await == 0 }).await;
    assert_eq!(used().await, before, "the trash still takes room");
    c.net.shutdown().await;
}
