//! A real network in the test process: a coordinator and N nodes on OS-chosen 127.0.0.1
//! ports, each with its own data directory in a temporary folder.

use std::path::{Path, PathBuf};

use p2pstore::client::Client;
use p2pstore::codec::EncodeParams;
use p2pstore::config::Config;
use p2pstore::crypto::MIN_ITERATIONS;
use p2pstore::devnet::Devnet;
use p2pstore::erasure::Shape;

/// Small segments so tests cover many segments with little data.
pub const SEGMENT: u32 = 64 * 1024;
pub const PER_SEGMENT: usize = SEGMENT as usize - 16;

pub struct Cluster {
    pub net: Devnet,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(nodes: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let net = Devnet::start(Config::default(), &dir.path().join("net"), 0, nodes).await.unwrap();
        let client = Client::new(&net.url());
        Cluster { net, client, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

pub fn params(k: u8, n: u8) -> EncodeParams {
    EncodeParams { shape: Shape::new(k, n).unwrap(), segment_size: SEGMENT, iterations: MIN_ITERATIONS }
}

/// Deterministic, incompressible-looking bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}
