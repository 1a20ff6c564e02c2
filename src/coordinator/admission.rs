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

use super::limits::address_key;
use super::state::{PeerRecord, State};
use crate::core::address;
use crate::core::identity;
use crate::net::client::{self as http, request};
use crate::net::server::ApiError;
use crate::proto::*;

/// How long a dial-back may take: a node answers `/v2/identify` at once, so a dial-back that
/// takes longer holds a turn for nothing.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Dial-backs running at once, from all addresses together.
const DIAL_BACKS: usize = 16;
/// Dial-backs running at once for registrations from one address (an IPv6 /64): a stream of
/// stalled dial-backs from one address holds these turns and no more.
const DIAL_BACKS_PER_ADDRESS: usize = 2;
/// How long a registration waits for a dial-back turn before it is answered 503.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Turns for dial-backs: [`DIAL_BACKS`] at once, at most [`DIAL_BACKS_PER_ADDRESS`] of them
/// for registrations from one address, so a burst of registrations can neither make the
/// coordinator dial without bound nor, from one address, keep others' dial-backs waiting.
pub(super) struct DialBacks {
    turns: tokio::sync::Semaphore,
    by_address: std::sync::Mutex<std::collections::HashMap<IpAddr, std::sync::Arc<tokio::sync::Semaphore>>>,
}

/// A dial-back turn, given back when dropped.
struct Turn<'a> {
    _turn: tokio::sync::SemaphorePermit<'a>,
    _address: Option<AddressTurn<'a>>,
}

/// One of an address's turns; the address is forgotten when nobody holds or waits for one.
struct AddressTurn<'a> {
    sem: std::sync::Arc<tokio::sync::Semaphore>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    key: IpAddr,
    owner: &'a DialBacks,
}

impl Drop for AddressTurn<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut m = self.owner.by_address.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and this one: nobody else holds or waits for a turn.
        if std::sync::Arc::strong_count(&self.sem) == 2 {
            m.remove(&self.key);
        }
    }
}

impl DialBacks {
    pub fn new() -> DialBacks {
        DialBacks { turns: tokio::sync::Semaphore::new(DIAL_BACKS), by_address: Default::default() }
    }

    /// Waits (at most [`TURN_WAIT`]) for a turn of the address `from`, then for one of all.
    async fn turn(&self, from: Option<IpAddr>) -> Result<Turn<'_>, ApiError> {
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many registrations are being checked; try again shortly",
            )
        };
        let wait = async {
            let address = match from.map(address_key) {
                Some(key) => {
                    let sem = self
                        .by_address
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key)
                        .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(DIAL_BACKS_PER_ADDRESS)))
                        .clone();
                    // Held while waiting, so the address is kept while anyone waits.
                    let mut held = AddressTurn { sem, permit: None, key, owner: self };
                    held.permit = Some(held.sem.clone().acquire_owned().await.map_err(ApiError::internal)?);
                    Some(held)
                }
                None => None,
            };
            let turn = self.turns.acquire().await.map_err(ApiError::internal)?;
            Ok(Turn { _turn: turn, _address: address })
        };
        tokio::time::timeout(TURN_WAIT, wait).await.map_err(|_| busy())?
    }
}
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

/// Reaches the peer at `addr` and checks that the key `key` answers there (dial-back), in a
/// turn of the address `from` the registration came from.
pub(super) async fn dial_back(s: &State, addr: &str, key: &str, from: Option<IpAddr>) -> Result<Reached, ApiError> {
    let a = address::parse(addr).map_err(|e| ApiError::bad_request(format!("address `{addr}`: {e}")))?;
    let ip = resolve(&a.host, a.port).await?;
    if !s.config.coordinator.private_addresses_allowed() && !address::is_public(ip) {
        return Err(refused(format!(
            "address `{addr}` is not a public address; this coordinator dials public addresses only \
             ([coordinator] allow_private_addresses)"
        )));
    }
    let _turn = s.dial_backs.turn(from).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_dial_backs() {
        let d = DialBacks::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<_> = futures::future::join_all((0..DIAL_BACKS_PER_ADDRESS).map(|_| d.turn(Some(a)))).await;
        assert!(held.iter().all(Result::is_ok));
        // One more from that address waits...
        assert!(tokio::time::timeout(Duration::from_millis(50), d.turn(Some(a))).await.is_err());
        // ... while another address gets a turn at once.
        let other = tokio::time::timeout(Duration::from_millis(50), d.turn(Some(b))).await;
        assert!(matches!(other, Ok(Ok(_))));
        drop(other);
        drop(held);
        // Nobody holds or waits for a turn: no address is remembered.
        assert!(d.by_address.lock().unwrap().is_empty());
        assert_eq!(d.turns.available_permits(), DIAL_BACKS);
    }
}
