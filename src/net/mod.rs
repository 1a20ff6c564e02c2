//! Talking over the network: the HTTP server every role runs (`server`), the bounded HTTP
//! client (`client`), HTTPS for both (`tls`), moving shards and segments to and from nodes (`transfer`), and the
//! Prometheus metrics each server exposes (`metrics`). Architecture invariant: depends on
//! `core`, `proto` and `sys` only; no role's state lives here.

pub mod client;
pub mod metrics;
pub mod server;
pub mod tls;
pub mod transfer;
