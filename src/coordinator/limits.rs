//! What one account or one address may ask of the coordinator per minute, decided before the
//! work: upload plans (each a stored record and a signature per planned peer) and new peer
//! registrations (each a dial-back). Token buckets from `governor`, keyed by account and by
//! IP address; keys idle for a while are forgotten, so the limiter's own memory stays bounded.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::StatusCode;

use crate::config::LimitsConfig;
use crate::net::server::ApiError;

/// Namespace requests (`/v2/names/*`) one account may make per minute: each is one small
/// database read or write, so the bound is generous.
const NAMES_PER_MINUTE: u32 = 60_000;

pub(super) struct Limits {
    plans_by_account: DefaultKeyedRateLimiter<String>,
    plans_by_address: DefaultKeyedRateLimiter<IpAddr>,
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    names_by_account: DefaultKeyedRateLimiter<String>,
    per_minute: (u32, u32),
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn slow_down(what: &str, n: u32) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("at most {n} {what} per minute here; try again shortly"))
}

impl Limits {
    pub fn new(c: &LimitsConfig) -> Limits {
        Limits {
            plans_by_account: RateLimiter::keyed(per_minute(c.plans_per_minute)),
            plans_by_address: RateLimiter::keyed(per_minute(c.plans_per_minute)),
            registrations: RateLimiter::keyed(per_minute(c.registrations_per_minute)),
            names_by_account: RateLimiter::keyed(per_minute(NAMES_PER_MINUTE)),
            per_minute: (c.plans_per_minute, c.registrations_per_minute),
        }
    }

    /// One more upload plan for `account` from `remote`, or 429.
    pub fn plan(&self, account: &str, remote: Option<IpAddr>) -> Result<(), ApiError> {
        let by_address = remote.is_none_or(|ip| self.plans_by_address.check_key(&ip).is_ok());
        if self.plans_by_account.check_key(&account.to_owned()).is_err() || !by_address {
            return Err(slow_down("upload plans", self.per_minute.0));
        }
        Ok(())
    }

    /// One more namespace request for `account`, or 429.
    pub fn names(&self, account: &str) -> Result<(), ApiError> {
        if self.names_by_account.check_key(&account.to_owned()).is_err() {
            return Err(slow_down("namespace requests", NAMES_PER_MINUTE));
        }
        Ok(())
    }

    /// One more new peer from `remote`, or 429.
    pub fn registration(&self, remote: Option<IpAddr>) -> Result<(), ApiError> {
        match remote {
            Some(ip) if self.registrations.check_key(&ip).is_err() => {
                Err(slow_down("new peers from one address", self.per_minute.1))
            }
            _ => Ok(()),
        }
    }

    /// Forgets keys whose buckets are full again (called by the periodic workers).
    pub fn forget_idle(&self) {
        self.plans_by_account.retain_recent();
        self.plans_by_address.retain_recent();
        self.registrations.retain_recent();
        self.names_by_account.retain_recent();
    }
}
