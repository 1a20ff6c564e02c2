//! Admitting peers. A peer counts as online only after the coordinator has reached it at the
//! address it advertises and it has signed a fresh challenge there with its key (dial-back):
//! an address nobody listens at, or where another key answers, never receives a shard. The
//! address must be `http(s)://host:port`; non-public addresses are dialled only where
//! `[coordinator] allow_private_addresses` says so. New identities carry a proof-of-work,
//! pass the allowlist when `[security] node_admission = "allowlist"`, and are counted against
//! `max_peers` only while they have been heard from within `[coordinator] forget_after`.

use std::net::IpAddr;
use std::time::Duration;

use hyper::StatusCode;

use super::state::{PeerRecord, State};
use crate::core::address;
use crate::core::identity;
use crate::net::client::{self as http, request};
use crate::net::server::ApiError;
use crate::proto::*;

/// How long a dial-back may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a dial-back answer read at most.
const DIAL_REPLY_LIMIT: usize = 16 << 10;

/// Where a peer was reached: the IP address and port its advertised address resolved to.
pub(super) struct Reached {
    pub ip: IpAddr,
    pub port: u16,
}

fn refused(m: impl Into<String>) -> ApiError {
    ApiError::forbidden(m)
}

/// Checks what only a new identity must show: it was not disqualified before, it is allowed,
/// its key carries the proof-of-work, and `max_peers` has room among recent peers.
pub(super) fn check_new_peer(s: &State, id: &str, hb: &Heartbeat, key: &str) -> Result<(), ApiError> {
    if s.banned.get(id).map_err(ApiError::internal)?.is_some() {
        return Err(refused(format!("peer {id} was disqualified and may not register again")));
    }
    if s.config.security.node_admission == NodeAdmission::Allowlist
        && s.allowed_nodes.get(id).map_err(ApiError::internal)?.is_none()
    {
        return Err(refused(format!(
            "node {id} is not on this coordinator's allowlist; ask its operator to run \
             `p2pstore coordinator node allow {id}`"
        )));
    }
    let bits = s.config.security.node_pow_bits;
    let have = hex::decode(key).map(|k| identity::pow_bits(&k, hb.pow)).unwrap_or(0);
    if have < bits {
        return Err(refused(format!(
            "this coordinator asks {bits} bits of proof-of-work of a node key; this one has {have}"
        )));
    }
    let horizon = s.config.coordinator.forget_after.saturating_mul(86_400);
    let now = s.now();
    let recent = s.peers.readable().iter().filter(|(_, p)| now.saturating_sub(p.last_heartbeat) <= horizon).count();
    if recent >= s.config.coordinator.max_peers as usize {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the coordinator has max_peers peers already"));
    }
    Ok(())
}

/// Reaches the peer at `addr` and checks that the key `key` answers there (dial-back).
pub(super) async fn dial_back(s: &State, addr: &str, key: &str) -> Result<Reached, ApiError> {
    let a = address::parse(addr).map_err(|e| ApiError::bad_request(format!("address `{addr}`: {e}")))?;
    let ip = resolve(&a.host, a.port).await?;
    if !s.config.coordinator.private_addresses_allowed() && !address::is_public(ip) {
        return Err(refused(format!(
            "address `{addr}` is not a public address; this coordinator dials public addresses only \
             ([coordinator] allow_private_addresses)"
        )));
    }
    let _turn = s.dial_backs.acquire().await.map_err(ApiError::internal)?;
    let nonce = hex::encode(crate::core::crypto::Salt::random().0);
    let challenge = IdentifyChallenge { coordinator: s.id(), nonce: nonce.clone() };
    let body = bytes::Bytes::from(serde_json::to_vec(&challenge).expect("wire types serialize"));
    let url = format!("{addr}/v2/identify");
    let unreachable = |why: String| {
        tracing::info!(address = %addr, reason = %why, "dial-back failed");
        refused(format!(
            "the coordinator could not reach this node at {addr} ({why}); check --advertise and the firewall"
        ))
    };
    let req = request("POST", &url, &[("content-type", "application/json")], body).map_err(ApiError::internal)?;
    let client = http::Client::new(DIAL_TIMEOUT);
    let reply = client.send_limited(req, DIAL_REPLY_LIMIT).await.map_err(|e| unreachable(e.summary()))?;
    let answer: Signed<Identified> = reply.json().map_err(|_| unreachable("no valid answer".into()))?;
    match answer.open_by(key) {
        Some(i) if i.nonce == nonce && i.coordinator == s.id() && i.address == addr => Ok(Reached { ip, port: a.port }),
        _ => Err(unreachable("another key, or a wrong answer, at that address".into())),
    }
}

async fn resolve(host: &str, port: u16) -> Result<IpAddr, ApiError> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    let found = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    match found {
        Ok(Ok(mut addrs)) => addrs.next().map(|a| a.ip()).ok_or_else(|| refused(format!("`{host}` has no address"))),
        _ => Err(refused(format!("`{host}` could not be resolved"))),
    }
}

/// Whether the peer must be reached again: new, or advertising a new address.
pub(super) fn needs_dial_back(old: Option<&PeerRecord>, address: &str) -> bool {
    old.is_none_or(|p| p.verified_address != address)
}
