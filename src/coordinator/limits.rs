//! What one account or one address may ask of the coordinator per minute, decided before the
//! work: upload plans (each a stored record and a signature per planned peer), new peer
//! registrations (each a dial-back) and new accounts (each a permanent record with a quota of
//! its own). Token buckets from `governor`, keyed by account and by address (an IPv4 address,
//! an IPv6 /64); keys idle for a while are forgotten, so the limiter's own memory stays
//! bounded.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::StatusCode;

use crate::config::LimitsConfig;
use crate::net::server::ApiError;

/// Layouts and batches an account may make per plan it may ask for: a file of many windows
/// takes a few of each, most take one or none.
const STEPS_PER_PLAN: u32 = 4;

/// Namespace requests (`/v2/names/*`) one account may make per minute: each is one small
/// database read or write, so the bound is generous.
const NAMES_PER_MINUTE: u32 = 60_000;

pub(super) struct Limits {
    plans_by_account: DefaultKeyedRateLimiter<String>,
    plans_by_address: DefaultKeyedRateLimiter<IpAddr>,
    steps_by_account: DefaultKeyedRateLimiter<String>,
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    accounts: DefaultKeyedRateLimiter<IpAddr>,
    names_by_account: DefaultKeyedRateLimiter<String>,
    config: LimitsConfig,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn slow_down(what: &str, n: u32) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("at most {n} {what} per minute here; try again shortly"))
}

/// The key an address is counted under: the address itself for IPv4, its /64 for IPv6 (what
/// one customer is usually given).
pub(super) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Limits {
    pub fn new(c: &LimitsConfig) -> Limits {
        Limits {
            plans_by_account: RateLimiter::keyed(per_minute(c.plans_per_minute)),
            plans_by_address: RateLimiter::keyed(per_minute(c.plans_per_minute)),
            steps_by_account: RateLimiter::keyed(per_minute(c.plans_per_minute.saturating_mul(STEPS_PER_PLAN))),
            registrations: RateLimiter::keyed(per_minute(c.registrations_per_minute)),
            accounts: RateLimiter::keyed(Quota::per_hour(
                NonZeroU32::new(c.accounts_per_hour).unwrap_or(NonZeroU32::MIN),
            )),
            names_by_account: RateLimiter::keyed(per_minute(NAMES_PER_MINUTE)),
            config: c.clone(),
        }
    }

    /// One more upload plan for `account` from `remote`, or 429.
    pub fn plan(&self, account: &str, remote: Option<IpAddr>) -> Result<(), ApiError> {
        let by_address = remote.is_none_or(|ip| self.plans_by_address.check_key(&address_key(ip)).is_ok());
        if self.plans_by_account.check_key(&account.to_owned()).is_err() || !by_address {
            return Err(slow_down("upload plans", self.config.plans_per_minute));
        }
        Ok(())
    }

    /// One more step of an upload in progress (a layout, a batch of segments) for `account`,
    /// or 429: each is a stored record and a flush, and a batch checks a signature per shard.
    pub fn upload_step(&self, account: &str) -> Result<(), ApiError> {
        if self.steps_by_account.check_key(&account.to_owned()).is_err() {
            return Err(slow_down("upload layouts and batches", self.config.plans_per_minute * STEPS_PER_PLAN));
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
            Some(ip) if self.registrations.check_key(&address_key(ip)).is_err() => {
                Err(slow_down("new peers from one address", self.config.registrations_per_minute))
            }
            _ => Ok(()),
        }
    }

    /// One more new account from `remote`, or 429: accounts are free to make in open mode,
    /// and each is kept for good with a quota of its own.
    pub fn account(&self, remote: Option<IpAddr>) -> Result<(), ApiError> {
        match remote {
            Some(ip) if self.accounts.check_key(&address_key(ip)).is_err() => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "at most {} new accounts from one address per hour here; use an account you have \
                     (--account FILE), or try again later",
                    self.config.accounts_per_hour
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Forgets keys whose buckets are full again (called by the periodic workers).
    pub fn forget_idle(&self) {
        self.plans_by_account.retain_recent();
        self.plans_by_address.retain_recent();
        self.steps_by_account.retain_recent();
        self.registrations.retain_recent();
        self.accounts.retain_recent();
        self.names_by_account.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let key = |a: &str| address_key(a.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn upload_steps_are_counted_per_account() {
        let limits = Limits::new(&LimitsConfig { plans_per_minute: 1, ..LimitsConfig::default() });
        for _ in 0..STEPS_PER_PLAN {
            limits.upload_step("a").unwrap();
        }
        assert_eq!(limits.upload_step("a").unwrap_err().status, StatusCode::TOO_MANY_REQUESTS);
        assert!(limits.upload_step("b").is_ok());
    }

    #[test]
    fn new_accounts_are_counted_by_address() {
        let limits = Limits::new(&LimitsConfig { accounts_per_hour: 2, ..LimitsConfig::default() });
        let (a, b) = (Some("2001:db8::1".parse().unwrap()), Some("2001:db8::2".parse().unwrap()));
        assert!(limits.account(a).is_ok() && limits.account(b).is_ok(), "one /64");
        assert_eq!(limits.account(a).unwrap_err().status, StatusCode::TOO_MANY_REQUESTS);
        assert!(limits.account(Some("10.0.0.1".parse().unwrap())).is_ok(), "another address");
    }
}
