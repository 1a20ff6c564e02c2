//! Wall-clock time in unix seconds, as a value that can be handed around. Servers and
//! workers read the time through their `Clock`; decisions take `now` as an argument. A test
//! gives a server a manual clock and moves it forward instead of waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The system clock, or a manual one that only moves when told to.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The operating system's clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock standing at `start` until [`Clock::advance`] or [`Clock::set`] moves it. Clones
    /// share it, so a test keeps one and moves every server holding a clone.
    pub fn manual(start: u64) -> Clock {
        Clock { manual: Some(Arc::new(AtomicU64::new(start))) }
    }

    /// Unix seconds now.
    pub fn now(&self) -> u64 {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => system_now(),
        }
    }

    /// Moves a manual clock forward; the system clock cannot be moved (no effect).
    pub fn advance(&self, secs: u64) {
        if let Some(t) = &self.manual {
            t.fetch_add(secs, Ordering::SeqCst);
        }
    }

    /// Sets a manual clock; the system clock cannot be set (no effect).
    pub fn set(&self, secs: u64) {
        if let Some(t) = &self.manual {
            t.store(secs, Ordering::SeqCst);
        }
    }
}

fn system_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clocks_move_only_when_told_and_clones_share() {
        let c = Clock::manual(100);
        let shared = c.clone();
        assert_eq!(c.now(), 100);
        shared.advance(5);
        assert_eq!(c.now(), 105);
        c.set(7);
        assert_eq!(shared.now(), 7);
        let sys = Clock::system();
        sys.advance(1_000_000);
        assert!(sys.now().abs_diff(system_now()) < 5);
    }
}
