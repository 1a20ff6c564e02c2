//! `cargo bench`: the codec stages and pipelines over 1 GiB and the peak memory of
//! encoding 2 GiB (P2PSTORE_BENCH_MIB changes the size), printed as a table.
//! The same report is `p2pstore bench codec`.

fn main() {
    let mib: u64 = std::env::var("P2PSTORE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let params = p2pstore::core::codec::EncodeParams::default();
    print!("{}", p2pstore::bench::codec_report(mib << 20, 2 * (mib << 20), params));
}
