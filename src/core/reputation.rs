//! Peer reputation: beta reputation with forgetting (Jøsang & Ismail 2002, "The Beta
//! Reputation System"; the form Storj uses for audit reputation, storj.io blog "Reputation
//! matters" / design doc `node-selection`). Pure: outcomes in, scores out.
//!
//! After each outcome: α ← λα + w·success, β ← λβ + w·failure, score = α/(α+β).
//! Choices, with why (chosen by simulation, [`simulate`], `p2pstore bench reputation`):
//! - One outcome per challenged chunk (3 per audit); a chunk fails when its proof is missing
//!   or wrong: proven bad data. Timeouts and errors that prove nothing feed the separate
//!   suspension score instead (`coordinator::audit`).
//! - λ = 0.99 (a memory of about 100 chunks, 33 audits) and disqualification below 0.96:
//!   a node that lost 10% of its shards is disqualified after 17 audits in the median and
//!   within 47 audits in 99% of 10,000 simulated nodes; a node whose chunks fail 0.1% of the
//!   time was never disqualified in 3,000 simulated runs of 100,000 audits (λ = 0.995 with
//!   0.98 was faster for the first and failed the second twice). Storj's λ = 0.999 remembers
//!   more audits than a young network gives a node.
//! - w = 1 for success and failure: a symmetric estimate of the success rate.
//! - start α₀ = 1/(1−λ) = 100, β₀ = 0: a new node begins as if it had a full window of passed
//!   audits (score 1), so one unlucky first audit does not bar it; vetting guards against
//!   newcomers instead.

use serde::{Deserialize, Serialize};

pub const LAMBDA: f64 = 0.99;
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

/// What [`simulate`] found for nodes whose challenged chunks fail with probability `p`.
#[derive(Clone, Debug)]
pub struct Simulated {
    pub nodes: usize,
    /// Nodes disqualified within the audits simulated.
    pub disqualified: usize,
    /// Audits until disqualification: the median and the 99th percentile of the nodes (None
    /// when fewer were disqualified).
    pub median: Option<usize>,
    pub p99: Option<usize>,
}

/// Simulates `nodes` nodes each audited up to `audits` times with `items` chunks per audit,
/// every chunk failing with probability `p`, disqualified below `threshold`. Deterministic
/// for a `seed`.
pub fn simulate(p: f64, nodes: usize, audits: usize, items: usize, threshold: f64, seed: u64) -> Simulated {
    let mut x = seed | 1;
    let mut uniform = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut when: Vec<usize> = (0..nodes)
        .filter_map(|_| {
            let mut b = Beta::default();
            (1..=audits).find(|_| {
                for _ in 0..items {
                    b.record(uniform() >= p);
                }
                b.score() < threshold
            })
        })
        .collect();
    when.sort_unstable();
    let at = |q: f64| {
        let i = ((nodes as f64 * q).ceil() as usize).saturating_sub(1);
        when.get(i).copied()
    };
    Simulated { nodes, disqualified: when.len(), median: at(0.5), p99: at(0.99) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean score over the last 200 of 2,000 outcomes where every `period`-th one fails.
    fn mean_score(period: usize) -> f64 {
        let mut b = Beta::default();
        let mut sum = 0.0;
        for i in 0..2000 {
            b.record(i % period != period - 1);
            if i >= 1800 {
                sum += b.score();
            }
        }
        sum / 200.0
    }

    #[test]
    fn losing_data_disqualifies_and_transient_errors_do_not() {
        // Smaller runs than the documented ones (p2pstore bench reputation), same shape.
        let lost = simulate(0.1, 500, 1000, 3, 0.96, 7);
        assert_eq!(lost.disqualified, 500);
        assert!(lost.p99.unwrap() <= 60, "{lost:?}");
        let honest = simulate(0.001, 20, 100_000, 3, 0.96, 11);
        assert_eq!(honest.disqualified, 0, "{honest:?}");
    }

    #[test]
    fn settles_near_the_success_rate() {
        let five_percent = mean_score(20);
        assert!((0.93..=0.97).contains(&five_percent), "{five_percent}");
        let half = mean_score(2);
        assert!((0.45..=0.55).contains(&half), "{half}");
    }

    #[test]
    fn consecutive_failures_and_recovery() {
        let mut b = Beta::default();
        assert_eq!(b.score(), 1.0);
        // n failures in a row give 0.99^n: below the disqualification bound (0.96) after 5.
        for _ in 0..4 {
            b.record(false);
        }
        assert!(b.score() > 0.96, "{}", b.score());
        b.record(false);
        assert!(b.score() < 0.96, "{}", b.score());
        // A peer that recovers climbs back.
        for _ in 0..200 {
            b.record(true);
        }
        assert!(b.score() > 0.99, "{}", b.score());
    }

    #[test]
    fn one_failure_does_not_bar_a_new_peer() {
        let mut b = Beta::default();
        b.record(false);
        assert!(b.score() > 0.98, "still above min_reputation's default");
    }
}
