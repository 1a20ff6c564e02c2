//! The integration tests: one binary, one module per area.

mod browser;
mod cli;
mod harness;
mod network;
mod upkeep;
mod vectors;
mod web;
