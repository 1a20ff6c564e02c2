//! The integration tests: one binary, one module per area.

mod browser;
mod cli;
mod durability;
mod harness;
mod layers;
mod network;
mod records;
mod security;
mod tls;
mod upkeep;
mod vectors;
mod web;
