//! Accounts: what the coordinator tells anyone about itself, an account's own view (quota,
//! usage), and the operator's account commands, signed with the coordinator's own key when
//! the coordinator is running (`POST /v2/admin`), or applied to its database when it is not.

use hyper::StatusCode;

use super::auth::{Caller, fresh_nonce};
use super::state::{AccountRecord, AllowedNode, OwnedRecord, State, UploadRecord, Usage};
use crate::net::server::{ApiError, ApiResult, ok};
use crate::proto::*;
use crate::store::{DbError, RecordError, Table};

pub(super) fn info(s: &State) -> CoordinatorInfo {
    CoordinatorInfo {
        protocol: VERSION,
        coordinator_id: s.id(),
        coordinator_key: s.identity.public_key_hex(),
        accounts: s.config.security.accounts,
        node_pow_bits: s.config.security.node_pow_bits,
    }
}

/// What an account keeps and may still keep: (stored bytes, files, pending bytes). Every
/// upload asks (its quota check), so the stored figures are kept per account in step with
/// the owned table ([`own`], [`disown`]) rather than summed over all its files each time.
pub(super) fn usage(s: &State, account: &str) -> Result<(u64, u64, u64), RecordError> {
    let (stored, files) = stored(s, account)?;
    let pending =
        s.uploads.readable().iter().filter(|(_, u)| u.account == account).map(|(_, u)| u.pending_bytes()).sum();
    Ok((stored, files, pending))
}

/// (stored bytes, files) of `account`: kept figures while every change of the owned table
/// went through [`own`] and [`disown`] (its change count says so), else read from its records.
fn stored(s: &State, account: &str) -> Result<(u64, u64), RecordError> {
    let mut kept = s.usage_kept.lock().expect("not poisoned");
    if kept.0 != s.owned.changes() {
        *kept = (s.owned.changes(), Default::default());
    }
    if let Some(v) = kept.1.get(account) {
        return Ok(*v);
    }
    let (stored, files, _) = usage_in(&s.owned, None, account)?;
    kept.1.insert(account.to_owned(), (stored, files));
    Ok((stored, files))
}

/// What a file of `size` bytes in `k`-of-n segments takes of its owner's quota: its size, but
/// at least what its smallest shards take on nodes' disks (a block each), counted in the
/// quota's plaintext bytes as k blocks: a 1-byte file makes n shard files (round 4 of the
/// attacks: millions of them for a few MB of quota).
pub(super) fn charge(size: u64, k: u8) -> u64 {
    size.max(k as u64 * PutOrder::cost(0))
}

/// Records that `account` owns `file` of `size` bytes, and keeps its usage in step.
pub(super) fn own(s: &State, account: &str, file: &str, size: u64) -> Result<(), RecordError> {
    let key = format!("{account}/{file}");
    in_step(
        s,
        account,
        &key,
        |owned| owned.insert(&key, &OwnedRecord { size }),
        |(bytes, files), before| {
            *bytes = bytes.saturating_sub(before.map_or(0, |b| b.size)) + size;
            *files += before.is_none() as u64;
        },
    )
}

/// Records that `account` no longer owns `file`, and keeps its usage in step.
pub(super) fn disown(s: &State, account: &str, file: &str) -> Result<(), RecordError> {
    let key = format!("{account}/{file}");
    in_step(
        s,
        account,
        &key,
        |owned| owned.remove(&key),
        |(bytes, files), before| {
            if let Some(b) = before {
                *bytes = bytes.saturating_sub(b.size);
                *files = files.saturating_sub(1);
            }
        },
    )
}

/// Makes one `write` of the owned record `key` and applies `adjust` (given the record as it
/// was) to the account's kept usage, when no other write came between; else the kept
/// figures are dropped, to be read again.
fn in_step(
    s: &State,
    account: &str,
    key: &str,
    write: impl FnOnce(&Table<OwnedRecord>) -> Result<(), RecordError>,
    adjust: impl FnOnce(&mut Usage, Option<&OwnedRecord>),
) -> Result<(), RecordError> {
    let mut kept = s.usage_kept.lock().expect("not poisoned");
    let before = s.owned.get(key)?;
    let at = s.owned.changes();
    write(&s.owned)?;
    let in_step = kept.0 == at && s.owned.changes() == at + 1;
    kept.0 = s.owned.changes();
    match kept.1.get_mut(account) {
        Some(v) if in_step => adjust(v, before.as_ref()),
        _ if in_step => {}
        _ => kept.1.clear(),
    }
    Ok(())
}

fn usage_in(
    owned: &Table<OwnedRecord>,
    uploads: Option<&Table<UploadRecord>>,
    account: &str,
) -> Result<(u64, u64, u64), RecordError> {
    let mine = owned.scan_prefix(&format!("{account}/"))?;
    if let Some(e) = mine.errors.into_iter().next() {
        return Err(e);
    }
    let stored = mine.records.iter().map(|(_, o)| o.size).sum();
    let pending = uploads
        .map_or(0, |u| u.readable().iter().filter(|(_, u)| u.account == account).map(|(_, u)| u.pending_bytes()).sum());
    Ok((stored, mine.records.len() as u64, pending))
}

fn account_view(t: &AdminTables, id: &str, a: &AccountRecord) -> Result<AccountView, RecordError> {
    let (stored, files, pending) = usage_in(t.owned, t.uploads, id)?;
    let names = t.db.open_tree("names").and_then(|tree| super::names::bytes_in(&tree, id)).map_err(DbError::from)?;
    Ok(AccountView { account_id: id.to_owned(), quota: a.quota, stored, pending, files, created: a.created, names })
}

pub(super) fn view(s: &State, caller: &Caller) -> Result<AccountView, ApiError> {
    let (stored, files, pending) = usage(s, &caller.id).map_err(ApiError::internal)?;
    Ok(AccountView {
        account_id: caller.id.clone(),
        quota: caller.account.quota,
        stored,
        pending,
        files,
        created: caller.account.created,
        names: super::names::held(s, &caller.id)?,
    })
}

/// Refuses a new upload of `size` bytes that would take the account over its quota.
pub(super) fn check_quota(s: &State, caller: &Caller, size: u64) -> Result<(), ApiError> {
    check_quota_with(s, caller, size, super::names::held(s, &caller.id)?)
}

/// Bytes the account may still add before its quota.
pub(super) fn room(s: &State, caller: &Caller) -> Result<u64, ApiError> {
    let (stored, _, pending) = usage(s, &caller.id).map_err(ApiError::internal)?;
    let names = super::names::held(s, &caller.id)?;
    Ok(caller.account.quota.saturating_sub(stored.saturating_add(pending).saturating_add(names)))
}

/// Refuses `size` more bytes that would take the account over its quota, its namespace
/// holding `names` bytes (files and namespace count together).
pub(super) fn check_quota_with(s: &State, caller: &Caller, size: u64, names: u64) -> Result<(), ApiError> {
    let (stored, _, pending) = usage(s, &caller.id).map_err(ApiError::internal)?;
    let quota = caller.account.quota;
    if stored.saturating_add(pending).saturating_add(names).saturating_add(size) > quota {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "over quota: account {} may keep {quota} bytes and has {stored} stored, {pending} in uploads not yet \
                 committed and {names} in its namespace; this needs {size} more. Delete files, or ask the operator for \
                 a larger quota",
                caller.id
            ),
        ));
    }
    Ok(())
}

/// An operator's command, signed with the coordinator's own key.
pub(super) async fn admin(s: &State, signed: Signed<AdminRequest>) -> ApiResult {
    let req = signed
        .open_by(&s.identity.public_key_hex())
        .ok_or_else(|| ApiError::forbidden("admin requests must be signed with this coordinator's own key"))?;
    let now = s.now();
    if req.time.abs_diff(now) > CLOCK_SKEW {
        return Err(ApiError::forbidden("stale admin request"));
    }
    fresh_nonce(s, &format!("admin/{}", req.nonce), now)?;
    match req.action {
        AdminAction::Recover => {
            let report = super::recovery::recover_all(s).await.map_err(ApiError::internal)?;
            return ok(&AdminReply { recovery: Some(report), ..AdminReply::default() });
        }
        AdminAction::Backup => {
            let backup = super::backup::dump(&s.db).map_err(ApiError::internal)?;
            return ok(&AdminReply { backup, ..AdminReply::default() });
        }
        _ => {}
    }
    let tables = AdminTables {
        accounts: &s.accounts,
        owned: &s.owned,
        uploads: Some(&s.uploads),
        nodes: &s.allowed_nodes,
        db: &s.db,
    };
    let reply = apply(&tables, req.action, s.config.security.default_quota(), now).map_err(|e| match e {
        AdminError::Record(e) => ApiError::internal(e),
        other => ApiError::bad_request(other.to_string()),
    })?;
    ok(&reply)
}

/// Why an operator's command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no {0} here")]
    Missing(String),
    #[error("`{0}` is not an id (32 hex digits, as `p2pstore account new` or `p2pstore peers` print)")]
    BadId(String),
    #[error("recovery asks the nodes: run it against the running coordinator")]
    NeedsRunning,
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// The tables an operator's commands change.
pub(super) struct AdminTables<'a> {
    pub accounts: &'a Table<AccountRecord>,
    pub owned: &'a Table<OwnedRecord>,
    /// Pending uploads, known only while the coordinator runs.
    pub uploads: Option<&'a Table<UploadRecord>>,
    pub nodes: &'a Table<AllowedNode>,
    pub db: &'a sled::Db,
}

fn valid_id(id: &str) -> Result<String, AdminError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(AdminError::BadId(id.to_owned()))
    }
}

/// Applies an operator's command; returns the accounts or nodes it concerns (all of them
/// for a list).
pub(super) fn apply(
    t: &AdminTables,
    action: AdminAction,
    default_quota: u64,
    now: u64,
) -> Result<AdminReply, AdminError> {
    let mut reply = AdminReply::default();
    let mut accounts = Vec::new();
    match action {
        AdminAction::AddAccount { account, quota } => {
            let id = valid_id(&account)?;
            let quota = quota.unwrap_or(default_quota);
            let rec = t.accounts.update(&id, |old| {
                // The key is learnt from the account's first signed request.
                let public_key = old.as_ref().map(|a| a.public_key.clone()).unwrap_or_default();
                let created = old.as_ref().map_or(now, |a| a.created);
                Some(AccountRecord { public_key, quota, created, invited: true })
            })?;
            accounts.extend(rec.map(|r| (id, r)));
        }
        AdminAction::RemoveAccount { account } => {
            let id = valid_id(&account)?;
            let old = t.accounts.get(&id)?.ok_or_else(|| AdminError::Missing(format!("account {id}")))?;
            t.accounts.remove(&id)?;
            accounts.push((id, old));
        }
        AdminAction::ListAccounts => accounts = t.accounts.all()?,
        AdminAction::AllowNode { peer } => {
            let id = valid_id(&peer)?;
            t.nodes.insert(&id, &AllowedNode { added: now })?;
            reply.nodes.push(id);
        }
        AdminAction::DisallowNode { peer } => {
            let id = valid_id(&peer)?;
            t.nodes.get(&id)?.ok_or_else(|| AdminError::Missing(format!("allowed node {id}")))?;
            t.nodes.remove(&id)?;
            reply.nodes.push(id);
        }
        AdminAction::ListNodes => reply.nodes = t.nodes.all()?.into_iter().map(|(id, _)| id).collect(),
        AdminAction::Recover => return Err(AdminError::NeedsRunning),
        AdminAction::Backup => reply.backup = super::backup::dump(t.db).map_err(|e| AdminError::Record(e.into()))?,
    }
    for (id, a) in accounts {
        reply.accounts.push(account_view(t, &id, &a)?);
    }
    Ok(reply)
}
