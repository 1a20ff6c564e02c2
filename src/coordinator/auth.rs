//! Who is asking: requests for an account's state carry its signature in a header
//! (`proto::RequestAuth`), checked here before any body is read: for this coordinator, this
//! method and path, within the clock skew, with a nonce never seen before (nonces are kept,
//! durably, until they are too old to pass the skew check). An unknown account is registered
//! on its first signed request when `[security] accounts = "open"`, and refused under
//! `"invite"` until an operator adds it.

use std::net::IpAddr;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::http::request::Parts;

use super::state::{AccountRecord, NonceRecord, State};
use crate::net::server::{ApiError, declared_len, read_body_limited};
use crate::proto::*;

/// An account whose signature on the request checked out.
#[derive(Clone, Debug)]
pub(super) struct Caller {
    pub id: String,
    pub account: AccountRecord,
    auth: RequestAuth,
    declared: Option<u64>,
}

fn unauthorized(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, m)
}

/// Checks the signature in the request's header (not yet the body: see [`Caller::body`]).
pub(super) fn authenticate(s: &State, parts: &Parts, remote: Option<IpAddr>) -> Result<Caller, ApiError> {
    let header = parts.headers.get(AUTH_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        unauthorized(format!("this route needs a request signed by an account (header {AUTH_HEADER})"))
    })?;
    let auth = RequestAuth::parse(header).ok_or_else(|| unauthorized(format!("malformed {AUTH_HEADER} header")))?;
    let now = s.now();
    if auth.time.abs_diff(now) > CLOCK_SKEW {
        return Err(unauthorized(format!("request time {} is too far from ours ({now}); check the clock", auth.time)));
    }
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    if !auth.verify(&s.id(), parts.method.as_str(), path) {
        return Err(unauthorized("the request's signature does not verify for this coordinator, method and path"));
    }
    let id = auth.account_id();
    let account = admit(s, &id, &auth.account, remote)?;
    fresh_nonce(s, &format!("{id}/{}", auth.nonce), now)?;
    Ok(Caller { id, account, auth, declared: declared_len(&parts.headers) })
}

/// The account's record, registering it when accounts are open (and `remote` has not made
/// too many lately).
fn admit(s: &State, id: &str, key: &str, remote: Option<IpAddr>) -> Result<AccountRecord, ApiError> {
    match s.accounts.get(id).map_err(ApiError::internal)? {
        // Added by an operator before its first request: its key is learnt now.
        Some(a) if a.public_key.is_empty() => {
            let learn = |old: Option<AccountRecord>| old.map(|a| AccountRecord { public_key: key.to_owned(), ..a });
            let rec = s.accounts.update(id, learn).map_err(ApiError::internal)?;
            return rec.ok_or_else(|| ApiError::forbidden(format!("account {id} was removed")));
        }
        Some(a) => return Ok(a),
        None => {}
    }
    if s.config.security.accounts == AccountAdmission::Invite {
        return Err(ApiError::forbidden(format!(
            "account {id} is not admitted by this coordinator; ask its operator to run \
             `p2pstore coordinator account add {id}`"
        )));
    }
    s.limits.account(remote)?;
    let fresh = AccountRecord {
        public_key: key.to_owned(),
        quota: s.config.security.default_quota(),
        created: s.now(),
        invited: false,
    };
    let rec = s.accounts.update(id, |old| Some(old.unwrap_or_else(|| fresh.clone()))).map_err(ApiError::internal)?;
    tracing::info!(account = %id, "account registered");
    Ok(rec.unwrap_or(fresh))
}

/// Records `key` as used; refuses it when it was used before.
pub(super) fn fresh_nonce(s: &State, key: &str, now: u64) -> Result<(), ApiError> {
    let mut seen = false;
    s.nonces
        .update(key, |old| {
            seen = old.is_some();
            Some(old.unwrap_or(NonceRecord { time: now }))
        })
        .map_err(ApiError::internal)?;
    if seen {
        return Err(unauthorized("this request was already received once: a replay is refused"));
    }
    Ok(())
}

/// Forgets nonces too old to pass the skew check any more.
pub(super) fn prune_nonces(s: &State) -> Result<usize, crate::store::RecordError> {
    let cutoff = s.now().saturating_sub(2 * CLOCK_SKEW);
    let mut removed = 0;
    for (key, n) in s.nonces.all()? {
        if n.time < cutoff {
            s.nonces.remove(&key)?;
            removed += 1;
        }
    }
    Ok(removed)
}

impl Caller {
    /// The request's body, read up to `limit` bytes and checked against the signed hash.
    pub async fn body(&self, body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
        let bytes = read_body_limited(body, self.declared, limit).await?;
        if body_hash(&bytes) != self.auth.body {
            return Err(unauthorized("the body differs from the one the request's signature covers"));
        }
        Ok(bytes)
    }

    /// The body as JSON, checked as in [`Caller::body`].
    pub async fn json<T: serde::de::DeserializeOwned>(&self, body: Incoming, limit: usize) -> Result<T, ApiError> {
        let b = self.body(body, limit).await?;
        serde_json::from_slice(&b).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
    }

    /// A request that must carry no body (GET).
    pub async fn no_body(&self, body: Incoming) -> Result<(), ApiError> {
        self.body(body, 0).await.map(|_| ())
    }
}
