//! # p2pstore
//!
//! A decentralized, encrypted peer-to-peer store. A client encrypts a file with a key
//! derived from a password (PBKDF2 → HKDF → AES-256-GCM in the STREAM construction), cuts
//! it into segments, Reed-Solomon codes each segment into n shards of which any k rebuild
//! it, and names every shard by its BLAKE3 hash (a Merkle tree over its chunks), so any
//! holder of a shard id can check the shard, or a proof of one chunk of it, without the
//! data. The manifest that lists all of this is sealed where it names the file, and its
//! SHA-256 is the file id.
//!
//! The layers, each a folder, bottom to top; a module uses only the layers below it (the
//! test `tests/it/layers.rs` checks it):
//! - `sys`: the clock, durable and direct file writes, the buffer pool.
//! - `core`: the pure core (crypto, erasure, merkle, manifest, codec, placement, reputation,
//!   key pairs): no files, sockets or clock.
//! - `proto`: every wire type and `Signed<T>`.
//! - `store` (on-disk state: versioned tables, shard files, key files) and `net` (HTTP
//!   server and client, shard transfer, metrics).
//! - the roles: `node`, `coordinator`, `client`; then `devnet` (a network in one process),
//!   `bench` (measurements) and `cli` (the command line).
//!
//! docs/ARCHITECTURE.md has the bird's eye view, docs/FORMAT.md the byte layouts and
//! docs/PROTOCOL.md the wire protocol.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod coordinator;
pub mod core;
pub mod devnet;
pub mod gateway;
pub mod net;
pub mod node;
pub mod proto;
pub mod store;
pub mod sys;

pub use client::Client;
pub use devnet::Devnet;
