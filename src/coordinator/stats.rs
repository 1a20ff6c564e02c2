//! The network at a glance, for `/v2/stats` (the dashboard) and the gauges of `/metrics`.

use std::collections::{BTreeMap, HashMap};

use prometheus::{IntGaugeVec, Opts};

use super::repair::Rules;
use super::state::{PeerRecord, State};
use crate::proto::*;

pub(super) fn compute(s: &State) -> NetworkStats {
    let peers: HashMap<String, PeerRecord> = s.peers.readable().into_iter().collect();
    let rules = Rules::of(s);
    let mut st = NetworkStats::default();
    for p in peers.values() {
        match p.status {
            PeerStatus::Disqualified => st.peers_disqualified += 1,
            PeerStatus::Exited => continue,
            PeerStatus::Exiting => st.peers_exiting += 1,
            _ if s.is_online(p) => st.peers_online += 1,
            _ => st.peers_offline += 1,
        }
        if s.is_online(p) {
            st.capacity += p.capacity;
            st.used += p.used;
        }
    }
    let mut health: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, f) in s.files.readable() {
        let Some(m) = f.parsed() else { continue };
        st.files += 1;
        st.stored_bytes += m.plaintext_size;
        for seg in 0..f.placements.len() {
            let healthy = (f.placements[seg].len() - rules.unhealthy(&peers, &m, &f, seg).len()) as u32;
            *health.entry(healthy).or_default() += 1;
        }
    }
    st.health = health.into_iter().collect();
    let since = s.now().saturating_sub(60);
    let recent: Vec<AuditOutcome> =
        s.recent_audits.lock().expect("not poisoned").iter().filter(|(t, _)| *t >= since).map(|(_, o)| *o).collect();
    st.audits_last_minute = recent.len() as u64;
    let passed = recent.iter().filter(|o| **o == AuditOutcome::Success).count();
    st.audit_pass_rate = if recent.is_empty() { 1.0 } else { passed as f64 / recent.len() as f64 };
    st.repair_queue = s.repair_queue.lock().expect("not poisoned").len() as u64;
    st.repaired_shards = s.counters.repaired_shards.get();
    st
}

/// Sets the gauges a scrape reads from the current state.
pub(super) fn refresh_gauges(s: &State) {
    let st = compute(s);
    let g = &s.counters.network;
    for (state, n) in [
        ("online", st.peers_online),
        ("offline", st.peers_offline),
        ("disqualified", st.peers_disqualified),
        ("exiting", st.peers_exiting),
    ] {
        g.with_label_values(&["peers", state]).set(n as i64);
    }
    g.with_label_values(&["capacity_bytes", ""]).set(st.capacity as i64);
    g.with_label_values(&["used_bytes", ""]).set(st.used as i64);
    g.with_label_values(&["files", ""]).set(st.files as i64);
    g.with_label_values(&["stored_bytes", ""]).set(st.stored_bytes as i64);
    g.with_label_values(&["repair_queue", ""]).set(st.repair_queue as i64);
    for (table, errors) in [
        (s.peers.name(), s.peers.decode_errors()),
        (s.files.name(), s.files.decode_errors()),
        (s.uploads.name(), s.uploads.decode_errors()),
        (s.audits.name(), s.audits.decode_errors()),
    ] {
        s.counters.undecodable.with_label_values(&[table]).set(errors as i64);
    }
}

pub(super) fn gauge_vec() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new("network", "Peers by state, capacity, files, stored bytes, repair queue"),
        &["what", "state"],
    )
    .expect("valid metric")
}
