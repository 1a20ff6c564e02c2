//! Each account's private namespace (`/v2/names/*`): opaque keys and values the account's
//! gateway stores (its encrypted bucket and object names, sealed object records). The
//! coordinator keeps them in the `names` tree under `<account id>/<key>`, bounded in size,
//! and cannot read them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::auth::Caller;
use super::state::State;
use crate::net::server::ApiError;
use crate::proto::*;

/// Keys are printable ASCII (the gateway writes base64url and `/`), at most [`MAX_NAME_KEY`].
fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_NAME_KEY || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ApiError::bad_request(format!(
            "a namespace key is 1 to {MAX_NAME_KEY} printable ASCII characters"
        )));
    }
    Ok(())
}

fn db_error(e: sled::Error) -> ApiError {
    ApiError::internal(crate::store::DbError::from(e))
}

fn full_key(caller: &Caller, key: &str) -> String {
    format!("{}/{key}", caller.id)
}

/// Bytes (keys and values) of `account`'s namespace: kept per account in step with every put
/// and delete (all go through here, under the lock held by the caller), read from the tree
/// the first time.
pub(super) fn bytes_of(
    s: &State,
    kept: &mut std::collections::HashMap<String, u64>,
    account: &str,
) -> Result<u64, ApiError> {
    if let Some(&b) = kept.get(account) {
        return Ok(b);
    }
    let total = bytes_in(&s.names, account).map_err(db_error)?;
    kept.insert(account.to_owned(), total);
    Ok(total)
}

/// Bytes (keys and values) of `account`'s namespace in `names`, summed.
pub(super) fn bytes_in(names: &sled::Tree, account: &str) -> Result<u64, sled::Error> {
    let mut total = 0;
    for kv in names.scan_prefix(format!("{account}/").as_bytes()) {
        let (k, v) = kv?;
        total += (k.len() + v.len()) as u64;
    }
    Ok(total)
}

/// The bytes an account's namespace holds (counted against its quota with its files).
pub(super) fn held(s: &State, account: &str) -> Result<u64, ApiError> {
    bytes_of(s, &mut s.names_kept.lock().expect("not poisoned"), account)
}

pub(super) fn put(s: &State, caller: &Caller, req: NamePut) -> Result<NamePutReply, ApiError> {
    check_key(&req.key)?;
    let value = B64.decode(req.value.as_bytes()).map_err(|_| ApiError::bad_request("a namespace value is base64"))?;
    if value.len() > MAX_NAME_VALUE {
        return Err(ApiError::new(
            hyper::StatusCode::PAYLOAD_TOO_LARGE,
            format!("a namespace value is at most {MAX_NAME_VALUE} bytes"),
        ));
    }
    let key = full_key(caller, &req.key);
    // The namespace lives on the coordinator's own disk: it counts against the account's
    // quota with its files (a free account could otherwise fill the disk with values).
    let mut kept = s.names_kept.lock().expect("not poisoned");
    let before = bytes_of(s, &mut kept, &caller.id)?;
    let old = s.names.get(key.as_bytes()).map_err(db_error)?.map_or(0, |v| (key.len() + v.len()) as u64);
    let after = before - old.min(before) + (key.len() + value.len()) as u64;
    if after > before {
        super::accounts::check_quota_with(s, caller, after - before, before)?;
    }
    let created = if req.if_absent {
        match s.names.compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(value)).map_err(db_error)? {
            Ok(()) => true,
            Err(_) => return Err(ApiError::new(hyper::StatusCode::CONFLICT, format!("key {} exists", req.key))),
        }
    } else {
        s.names.insert(key.as_bytes(), value).map_err(db_error)?.is_none()
    };
    kept.insert(caller.id.clone(), after);
    Ok(NamePutReply { created })
}

pub(super) fn get(s: &State, caller: &Caller, req: NameGet) -> Result<NameEntry, ApiError> {
    check_key(&req.key)?;
    match s.names.get(full_key(caller, &req.key).as_bytes()).map_err(db_error)? {
        Some(v) => Ok(NameEntry { key: req.key, value: B64.encode(&v) }),
        None => Err(ApiError::not_found(format!("no key {}", req.key))),
    }
}

/// Bytes of keys and values a listing page carries at most (then it says `more`): a page of
/// a thousand 4 MiB values, in base64, took over 5 GB of memory to answer.
const LIST_BYTES: usize = 8 << 20;

pub(super) fn list(s: &State, caller: &Caller, req: NameList) -> Result<NameListing, ApiError> {
    if req.prefix.len() > MAX_NAME_KEY || req.start_after.len() > MAX_NAME_KEY {
        return Err(ApiError::bad_request(format!("a namespace prefix is at most {MAX_NAME_KEY} bytes")));
    }
    let limit = req.limit.clamp(1, MAX_NAME_LIST) as usize;
    let own = format!("{}/", caller.id);
    let prefix = format!("{own}{}", req.prefix);
    let mut entries = Vec::new();
    let mut more = false;
    let after = format!("{own}{}", req.start_after);
    let start = if req.start_after.is_empty() || after < prefix {
        std::ops::Bound::Included(prefix.clone().into_bytes())
    } else {
        std::ops::Bound::Excluded(after.into_bytes())
    };
    let mut bytes = 0;
    for kv in s.names.range((start, std::ops::Bound::Unbounded)) {
        let (k, v) = kv.map_err(db_error)?;
        if !k.starts_with(prefix.as_bytes()) {
            break;
        }
        if entries.len() == limit || (bytes >= LIST_BYTES && !entries.is_empty()) {
            more = true;
            break;
        }
        bytes += k.len() + if req.keys_only { 0 } else { v.len() };
        let key = String::from_utf8_lossy(&k[own.len()..]).into_owned();
        let value = if req.keys_only { String::new() } else { B64.encode(&v) };
        entries.push(NameEntry { key, value });
    }
    Ok(NameListing { entries, more })
}

pub(super) fn delete(s: &State, caller: &Caller, req: NameDelete) -> Result<Removed, ApiError> {
    if req.keys.len() > MAX_NAME_LIST as usize {
        return Err(ApiError::bad_request(format!("at most {MAX_NAME_LIST} keys per delete")));
    }
    let mut kept = s.names_kept.lock().expect("not poisoned");
    let mut total = bytes_of(s, &mut kept, &caller.id)?;
    let mut removed = 0;
    for key in &req.keys {
        check_key(key)?;
        let full = full_key(caller, key);
        if let Some(v) = s.names.remove(full.as_bytes()).map_err(db_error)? {
            total = total.saturating_sub((full.len() + v.len()) as u64);
            removed += 1;
        }
    }
    kept.insert(caller.id.clone(), total);
    Ok(Removed { removed })
}
