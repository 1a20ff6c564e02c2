//! The operating system's services, wrapped once: the clock, files that must survive a crash
//! or bypass the page cache, and the pool of page-aligned buffers. Depends on nothing else in
//! the crate; everything above reads time and touches files through here.

pub mod clock;
pub mod fs;
pub mod pool;
