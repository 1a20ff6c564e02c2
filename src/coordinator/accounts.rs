//! Accounts: what the coordinator tells anyone about itself, an account's own view (quota,
//! usage), and the operator's account commands, signed with the coordinator's own key when
//! the coordinator is running (`POST /v2/admin`), or applied to its database when it is not.

use hyper::StatusCode;

use super::auth::{Caller, fresh_nonce};
use super::state::{AccountRecord, State};
use crate::net::server::{ApiError, ApiResult, ok};
use crate::proto::*;
use crate::store::{RecordError, Table};

pub(super) fn info(s: &State) -> CoordinatorInfo {
    CoordinatorInfo {
        protocol: VERSION,
        coordinator_id: s.id(),
        coordinator_key: s.identity.public_key_hex(),
        accounts: s.config.security.accounts,
    }
}

/// What an account keeps and may still keep: (stored bytes, files, pending bytes).
pub(super) fn usage(s: &State, account: &str) -> Result<(u64, u64, u64), RecordError> {
    let owned = s.owned.scan_prefix(&format!("{account}/"))?;
    if let Some(e) = owned.errors.into_iter().next() {
        return Err(e);
    }
    let stored = owned.records.iter().map(|(_, o)| o.size).sum();
    let pending = s.uploads.readable().iter().filter(|(_, u)| u.account == account).map(|(_, u)| u.size).sum();
    Ok((stored, owned.records.len() as u64, pending))
}

fn account_view(s: &State, id: &str, a: &AccountRecord) -> Result<AccountView, RecordError> {
    let (stored, files, pending) = usage(s, id)?;
    Ok(AccountView { account_id: id.to_owned(), quota: a.quota, stored, pending, files, created: a.created })
}

pub(super) fn view(s: &State, caller: &Caller) -> Result<AccountView, ApiError> {
    account_view(s, &caller.id, &caller.account).map_err(ApiError::internal)
}

/// Refuses a new upload of `size` bytes that would take the account over its quota.
pub(super) fn check_quota(s: &State, caller: &Caller, size: u64) -> Result<(), ApiError> {
    let (stored, _, pending) = usage(s, &caller.id).map_err(ApiError::internal)?;
    let quota = caller.account.quota;
    if stored.saturating_add(pending).saturating_add(size) > quota {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "over quota: account {} may keep {quota} bytes and has {stored} stored and {pending} in uploads not yet \
                 committed; this file needs {size} more. Delete files, or ask the operator for a larger quota",
                caller.id
            ),
        ));
    }
    Ok(())
}

/// An operator's command, signed with the coordinator's own key.
pub(super) fn admin(s: &State, signed: Signed<AdminRequest>) -> ApiResult {
    let req = signed
        .open_by(&s.identity.public_key_hex())
        .ok_or_else(|| ApiError::forbidden("admin requests must be signed with this coordinator's own key"))?;
    let now = s.now();
    if req.time.abs_diff(now) > CLOCK_SKEW {
        return Err(ApiError::forbidden("stale admin request"));
    }
    fresh_nonce(s, &format!("admin/{}", req.nonce), now)?;
    let accounts = apply(&s.accounts, req.action, s.config.security.default_quota(), now).map_err(admin_error)?;
    let views = accounts.iter().map(|(id, a)| account_view(s, id, a)).collect::<Result<Vec<_>, _>>();
    ok(&views.map_err(ApiError::internal)?)
}

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::NoAccount(_) | AdminError::BadId(_) => ApiError::bad_request(e.to_string()),
        AdminError::Record(e) => ApiError::internal(e),
    }
}

/// Why an operator's account command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no account {0} here")]
    NoAccount(String),
    #[error("`{0}` is not an account id (32 hex digits, as `p2pstore account new` prints)")]
    BadId(String),
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Applies an account command to the table; returns the accounts it concerns (all of them
/// for a list).
pub(super) fn apply(
    accounts: &Table<AccountRecord>,
    action: AdminAction,
    default_quota: u64,
    now: u64,
) -> Result<Vec<(String, AccountRecord)>, AdminError> {
    let valid = |id: &str| {
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(id.to_ascii_lowercase())
        } else {
            Err(AdminError::BadId(id.to_owned()))
        }
    };
    match action {
        AdminAction::AddAccount { account, quota } => {
            let id = valid(&account)?;
            let quota = quota.unwrap_or(default_quota);
            let rec = accounts.update(&id, |old| {
                // The key is learnt from the account's first signed request.
                let public_key = old.as_ref().map(|a| a.public_key.clone()).unwrap_or_default();
                let created = old.as_ref().map_or(now, |a| a.created);
                Some(AccountRecord { public_key, quota, created, invited: true })
            })?;
            Ok(rec.map(|r| vec![(id, r)]).unwrap_or_default())
        }
        AdminAction::RemoveAccount { account } => {
            let id = valid(&account)?;
            let old = accounts.get(&id)?.ok_or_else(|| AdminError::NoAccount(id.clone()))?;
            accounts.remove(&id)?;
            Ok(vec![(id, old)])
        }
        AdminAction::ListAccounts => Ok(accounts.all()?),
    }
}
