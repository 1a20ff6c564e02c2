//! The network at a glance, for `/v2/stats` (the dashboard) and the gauges of `/metrics`.

use std::collections::{BTreeMap, HashMap};

use prometheus::{IntGauge, IntGaugeVec, Opts};

use super::repair::Rules;
use super::state::{PeerRecord, State};
use crate::net::metrics::Metrics;
use crate::proto::*;

/// Segments by healthy shards: (healthy shards, segments).
pub(crate) type Histogram = Vec<(u32, u64)>;

/// What a walk over every file finds: segments by healthy shards, files, bytes stored.
#[derive(Clone, Default)]
pub(crate) struct Walked {
    health: Histogram,
    files: u64,
    stored_bytes: u64,
}

/// A figure computed by walking segment rows (seconds for terabytes), kept with what it was
/// computed from: it serves again until a file or a placement changes, or peers changed and
/// it is older than [`KEPT_WHILE_PEERS_CHANGE`] (heartbeats change peers all the time).
pub(crate) struct Kept<T> {
    at: std::time::Instant,
    /// Change counts of the files and segments tables, then of the peers table.
    data: (u64, u64),
    peers: u64,
    value: T,
}

const KEPT_WHILE_PEERS_CHANGE: std::time::Duration = std::time::Duration::from_secs(5);

impl<T: Clone> Kept<T> {
    /// Stamps `value` as computed from the state as it is now (read the stamp first: a
    /// change made during the computation then makes it stale).
    pub(crate) fn stamp(s: &State) -> impl FnOnce(T) -> Kept<T> {
        let (data, peers) = ((s.files.changes(), s.segments.changes()), s.peers.changes());
        move |value| Kept { at: std::time::Instant::now(), data, peers, value }
    }

    /// The value, while it still describes the state.
    pub(crate) fn get(&self, s: &State) -> Option<T> {
        let fresh = self.data == (s.files.changes(), s.segments.changes())
            && (self.peers == s.peers.changes() || self.at.elapsed() < KEPT_WHILE_PEERS_CHANGE);
        fresh.then(|| self.value.clone())
    }
}

/// Segments by healthy shards, files and bytes, over every readable file. `/v2/stats` and
/// `/metrics` answer anyone, so the walk (and the manifests it parses) is [`Kept`], and never
/// made twice at once (a second caller waits for the first's answer).
fn walk(s: &State, peers: &HashMap<String, PeerRecord>, rules: &Rules) -> Walked {
    let mut cache = s.health_cache.lock().expect("not poisoned");
    if let Some(w) = cache.as_ref().and_then(|c| c.get(s)) {
        return w;
    }
    let stamp = Kept::stamp(s);
    let mut health: BTreeMap<u32, u64> = BTreeMap::new();
    let mut walked = Walked::default();
    for (_, f) in &s.files.readable() {
        let Some(m) = f.parsed() else { continue };
        walked.files += 1;
        walked.stored_bytes = walked.stored_bytes.saturating_add(m.plaintext_size);
        let _ = s.visit_rows(f, |_, row| {
            let healthy = (row.placements.len() - rules.unhealthy(peers, &row).len()) as u32;
            *health.entry(healthy).or_default() += 1;
        });
    }
    walked.health = health.into_iter().collect();
    *cache = Some(stamp(walked.clone()));
    walked
}

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
            st.capacity = st.capacity.saturating_add(p.capacity);
            st.used = st.used.saturating_add(p.used);
        }
    }
    let walked = walk(s, &peers, &rules);
    (st.health, st.files, st.stored_bytes) = (walked.health, walked.files, walked.stored_bytes);
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

/// The network's gauges on /metrics, one quantity each, units in their names.
pub(super) struct Gauges {
    peers: IntGaugeVec,
    capacity: IntGauge,
    used: IntGauge,
    files: IntGauge,
    stored: IntGauge,
    repair_queue: IntGauge,
}

impl Gauges {
    pub fn new(m: &Metrics) -> Gauges {
        let gauge = |name: &str, help: &str| m.add(IntGauge::new(name, help).expect("valid metric"));
        Gauges {
            peers: m.add(IntGaugeVec::new(Opts::new("peers", "Peers by state"), &["state"]).expect("valid metric")),
            capacity: gauge("capacity_bytes", "Bytes online peers offer"),
            used: gauge("used_bytes", "Bytes online peers use"),
            files: gauge("files", "Committed files"),
            stored: gauge("stored_bytes", "Plaintext bytes of all committed files"),
            repair_queue: gauge("repair_queue_segments", "Segments waiting for or under repair"),
        }
    }
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
        g.peers.with_label_values(&[state]).set(n as i64);
    }
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    g.capacity.set(clamp(st.capacity));
    g.used.set(clamp(st.used));
    g.files.set(clamp(st.files));
    g.stored.set(clamp(st.stored_bytes));
    g.repair_queue.set(clamp(st.repair_queue));
    for (table, errors) in [
        (s.peers.name(), s.peers.decode_errors()),
        (s.files.name(), s.files.decode_errors()),
        (s.uploads.name(), s.uploads.decode_errors()),
        (s.audits.name(), s.audits.decode_errors()),
    ] {
        s.counters.undecodable.with_label_values(&[table]).set(errors as i64);
    }
}
