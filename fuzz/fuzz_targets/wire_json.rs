//! Every JSON body a server, node or client accepts from the network, as its wire type in
//! `p2pstore::proto`: the first byte picks the type (new types go at the end, so that the
//! seeds keep their meaning), the rest is the JSON text. Parsing must
//! never panic; and what parses must serialize, parse back, and serialize to the same text
//! (types holding floats are only serialized: serde_json's float parsing may round).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pstore::core::merkle::Proof;
use p2pstore::proto::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Parses `json` as `T`; checks that re-encoding is stable when `exact`.
fn check<T: Serialize + DeserializeOwned>(json: &[u8], exact: bool) {
    let Ok(v) = serde_json::from_slice::<T>(json) else { return };
    let once = serde_json::to_string(&v).expect("a parsed wire value serializes");
    let back: T =
        serde_json::from_str(&once).unwrap_or_else(|e| panic!("re-encoded value does not parse: {e}: {once}"));
    if exact {
        let twice = serde_json::to_string(&back).expect("serializes");
        assert_eq!(once, twice, "re-encoding is not stable");
    }
}

macro_rules! types {
    ($($t:ty => $exact:expr),* $(,)?) => {
        /// The parsers, one per type, in the order the selector byte indexes them.
        const PARSERS: &[fn(&[u8])] = &[$(|j| check::<$t>(j, $exact)),*];
        /// Their names, for seeds and reports.
        #[allow(dead_code)]
        const NAMES: &[&str] = &[$(stringify!($t)),*];
    };
}

types! {
    // Node → coordinator.
    Signed<Heartbeat> => true,
    Signed<ExitRequest> => true,
    Signed<Identified> => true,
    Heartbeat => true,
    ExitRequest => true,
    // Client → coordinator.
    PlanRequest => true,
    Commit => true,
    DeleteRequest => true,
    BrowserCommit => true,
    Signed<AdminRequest> => true,
    AdminRequest => true,
    AdminAction => true,
    // Coordinator → node.
    Signed<Notice> => true,
    Notice => true,
    NoticeEvent => true,
    Signed<InventoryRequest> => true,
    InventoryRequest => true,
    Signed<Challenge> => true,
    Challenge => true,
    IdentifyChallenge => true,
    Signed<PutOrder> => true,
    Signed<ReadGrant> => true,
    PutOrder => true,
    ReadGrant => true,
    Signed<ManifestCopy> => true,
    ManifestCopy => true,
    // Node → coordinator or client, answers.
    Signed<Receipt> => true,
    Receipt => true,
    Signed<AuditAnswer> => true,
    AuditAnswer => true,
    Proof => true,
    Inventory => true,
    HeldShard => true,
    NodeStatus => true,
    Removed => true,
    // Coordinator → client, answers.
    HeartbeatReply => true,
    Plan => true,
    CommitReply => true,
    FileView => false,
    FileSummary => true,
    PeerView => false,
    Vec<PeerView> => false,
    NetworkStats => false,
    AuditRecord => false,
    Vec<AuditRecord> => false,
    CoordinatorInfo => true,
    AccountView => true,
    AdminReply => true,
    BackupRecord => true,
    RecoveryReport => true,
    ErrorBody => true,
    Deleted => true,
    BrowserStarted => true,
    BrowserStored => true,
    // Node → coordinator and client → coordinator: damage found by scrubbing or by a reader.
    Signed<DamageReport> => true,
    DamageReport => true,
    DamageClaim => true,
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else { return };
    PARSERS[which as usize % PARSERS.len()](json);
});
