//! The integration tests: one binary, one module per area.

mod cli;
mod harness;
mod network;
mod vectors;
