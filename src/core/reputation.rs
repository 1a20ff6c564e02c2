//! Peer reputation: beta reputation with forgetting (Jøsang & Ismail 2002, "The Beta
//! Reputation System"; the form Storj uses for audit reputation, storj.io blog "Reputation
//! matters" / design doc `node-selection`). Pure: outcomes in, scores out.
//!
//! After each outcome: α ← λα + w·success, β ← λβ + w·failure, score = α/(α+β).
//! Choices, with why:
//! - λ = 0.9: the score is an exponential moving average over about 1/(1−λ) = 10 recent
//!   audits, so a peer that starts failing loses standing within minutes at a 1-minute audit
//!   interval, and one that recovers regains it as fast. Storj uses λ = 0.999 with far more
//!   audits per node; with few audits per peer a long memory would take days to react.
//! - w = 1 for success and failure: a symmetric estimate of the success rate p; the score
//!   settles near p (5% failures → ≈ 0.95, 50% → ≈ 0.5).
//! - start α₀ = 1/(1−λ) = 10, β₀ = 0: a new peer begins as if it had a full window of passed
//!   audits (score 1), so one unlucky first audit does not bar it; vetting (fewer shards until
//!   it has passed a number of audits) guards against newcomers instead. With these values n
//!   consecutive failures give a score of 0.9ⁿ: below 0.5 after 7, below 0.3 after 12.

use serde::{Deserialize, Serialize};

pub const LAMBDA: f64 = 0.9;
pub const WEIGHT: f64 = 1.0;
pub const ALPHA0: f64 = 1.0 / (1.0 - LAMBDA);

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Beta {
    pub alpha: f64,
    pub beta: f64,
}

impl Default for Beta {
    fn default() -> Self {
        Beta { alpha: ALPHA0, beta: 0.0 }
    }
}

impl Beta {
    pub fn record(&mut self, success: bool) {
        self.alpha = LAMBDA * self.alpha + if success { WEIGHT } else { 0.0 };
        self.beta = LAMBDA * self.beta + if success { 0.0 } else { WEIGHT };
    }

    pub fn score(&self) -> f64 {
        if self.alpha + self.beta == 0.0 { 1.0 } else { self.alpha / (self.alpha + self.beta) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean score over the last 200 of 1,000 outcomes where every `period`-th one fails.
    fn mean_score(period: usize) -> f64 {
        let mut b = Beta::default();
        let mut sum = 0.0;
        for i in 0..1000 {
            b.record(i % period != period - 1);
            if i >= 800 {
                sum += b.score();
            }
        }
        sum / 200.0
    }

    #[test]
    fn settles_near_the_success_rate() {
        let five_percent = mean_score(20);
        assert!((0.9..=1.0).contains(&five_percent), "{five_percent}");
        let half = mean_score(2);
        assert!((0.4..=0.6).contains(&half), "{half}");
        assert!(mean_score(20) > 0.5 && mean_score(2) < 0.6, "5% failures stay eligible, 50% do not");
    }

    #[test]
    fn consecutive_failures_and_recovery() {
        let mut b = Beta::default();
        assert_eq!(b.score(), 1.0);
        for _ in 0..7 {
            b.record(false);
        }
        assert!(b.score() < 0.5, "{}", b.score());
        for _ in 0..5 {
            b.record(false);
        }
        assert!(b.score() < 0.3);
        // A peer that recovers climbs back within about one window.
        for _ in 0..25 {
            b.record(true);
        }
        assert!(b.score() > 0.9, "{}", b.score());
    }

    #[test]
    fn one_failure_does_not_bar_a_new_peer() {
        let mut b = Beta::default();
        b.record(false);
        assert!(b.score() > 0.5);
    }
}
