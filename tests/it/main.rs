//! The integration tests: one binary, one module per area.

mod admission;
mod browser;
mod cli;
mod crash;
mod durability;
mod gateway;
mod harness;
mod hostile;
mod layers;
mod network;
mod proxy;
mod records;
mod security;
mod streams;
mod tls;
mod upkeep;
mod vectors;
mod web;
