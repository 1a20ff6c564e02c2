//! On-disk state of the roles: typed, versioned metadata records behind a small engine trait
//! (`table`, sled today), a node's shard files and their index (`shards`), and a role's key
//! pair (`identity`). Architecture invariant: depends on `core` and `sys` only.

pub mod durable;
pub mod identity;
pub mod shards;
pub mod table;

pub use durable::GroupCommit;
pub use table::{DbError, Record, RecordError, Scan, Table, Tree, open_db};
