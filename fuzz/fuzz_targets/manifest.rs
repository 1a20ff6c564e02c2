//! The manifest decoder: whatever bytes a coordinator or a download is handed. Anything it
//! accepts must be canonical (re-encodes to the very same bytes, hence the same file id),
//! and everything derived from an accepted manifest must be computable without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pstore::core::manifest::{FileId, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = FileId::parse(text) {
            assert_eq!(FileId::parse(&id.to_string()).unwrap(), id);
        }
    }
    let Ok(m) = Manifest::from_bytes(data) else { return };
    let bytes = m.to_bytes();
    assert_eq!(bytes, data, "an accepted manifest is not canonical");
    assert_eq!(Manifest::from_bytes(&bytes).expect("re-encoding parses"), m);
    let _ = m.file_id();
    for i in 0..m.segments.len() {
        let len = m.shard_len(i);
        assert!(len * m.shape.k() >= m.segments[i].sealed_len as usize, "shards too short for segment {i}");
        assert_eq!(m.segments[i].shard_ids.len(), m.shape.n());
    }
});
