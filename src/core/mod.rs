//! The pure core: everything that can be decided from bytes and numbers alone. Keys and
//! sealing (`crypto`), Reed-Solomon coding (`erasure`), shard ids and proofs (`merkle`), the
//! manifest and file ids (`manifest`), the streaming codec (`codec`), choosing peers
//! (`placement`), reputation math (`reputation`) and key pairs (`identity`).
//!
//! Architecture invariant: nothing here opens a file or a socket or reads the clock; the only
//! dependency inside the crate is the buffer pool (`sys::pool`). A test (`tests/it/layers.rs`)
//! enforces it, so all of this is unit-tested without servers, files or waiting.

pub mod address;
pub mod codec;
pub mod crypto;
pub mod erasure;
pub mod error;
pub mod identity;
pub mod manifest;
pub mod merkle;
pub mod placement;
pub mod reputation;
