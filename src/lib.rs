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
//! Module map: the pure core (no sockets, files or clocks) is `crypto`, `erasure`,
//! `merkle`, `manifest`, `codec`, `placement`, the wire types in `proto` and the buffer
//! `pool` they share with the I/O shell; the I/O shell
//! is `store`, `http`, `identity`, `coordinator`, `node`, `client` and `devnet`; `config`
//! and `cli` are the edges; `bench` measures.
//! docs/ARCHITECTURE.md has the bird's eye view, docs/FORMAT.md the byte layouts.

pub mod bench;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod coordinator;
pub mod crypto;
pub mod devnet;
pub mod erasure;
pub mod error;
pub mod http;
pub mod identity;
pub mod manifest;
pub mod merkle;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod pool;
pub mod proto;
pub mod reputation;
pub mod store;
pub mod web;
