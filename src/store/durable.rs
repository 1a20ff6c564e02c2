//! Group commit: many writers that each need their writes durable before they answer share
//! one flush. A writer takes a ticket after its writes; a flush that starts after a ticket was
//! taken covers it. While one flush runs, the writers that arrive wait for it to end and then
//! one of them flushes for all of them: a burst of shard puts costs two flushes, not one each.

use std::sync::{Arc, Condvar, Mutex};

/// Flushes shared by concurrent callers (see the module's documentation).
#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<Tickets>,
    done: Condvar,
}

#[derive(Default)]
struct Tickets {
    /// Tickets handed out.
    taken: u64,
    /// Every ticket up to this one is covered by a finished flush.
    covered: u64,
    /// A flush is running.
    running: bool,
}

impl GroupCommit {
    pub fn new() -> Arc<GroupCommit> {
        Arc::new(GroupCommit::default())
    }

    /// Returns once a flush that started after this call finished (blocking: call from a
    /// blocking thread). `flush` runs at most once, here, if this caller leads the next flush;
    /// a failed flush fails its leader, and the callers it would have covered lead again.
    pub fn sync<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut flush = Some(flush);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.taken += 1;
        let ticket = st.taken;
        loop {
            if st.covered >= ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let covers = st.taken;
                drop(st);
                let r = (flush.take().expect("a caller flushes at most once"))();
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.running = false;
                if r.is_ok() {
                    st.covered = st.covered.max(covers);
                }
                self.done.notify_all();
                return r;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`GroupCommit::sync`] of a sled database, from async code.
    pub async fn sync_db(self: &Arc<Self>, db: &sled::Db) -> Result<(), super::DbError> {
        let (me, db) = (self.clone(), db.clone());
        match tokio::task::spawn_blocking(move || me.sync(|| db.flush().map(|_| ()))).await {
            Ok(r) => r.map_err(super::DbError::from),
            Err(e) => Err(super::DbError(format!("flush: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn concurrent_callers_share_flushes_and_each_is_covered() {
        let g = GroupCommit::new();
        let (written, flushed, flushes) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (g, written, flushed, flushes) = (g.clone(), written.clone(), flushed.clone(), flushes.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                        g.sync(|| {
                            let upto = written.load(Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            flushed.fetch_max(upto, Ordering::SeqCst);
                            flushes.fetch_add(1, Ordering::SeqCst);
                            Ok::<(), ()>(())
                        })
                        .unwrap();
                        // A flush that started after this caller's write finished.
                        assert!(flushed.load(Ordering::SeqCst) >= mine);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(flushes.load(Ordering::SeqCst) < 640, "flushes were shared: {}", flushes.load(Ordering::SeqCst));
    }

    #[test]
    fn a_failed_flush_fails_its_leader_and_the_next_caller_flushes_again() {
        let g = GroupCommit::new();
        assert_eq!(g.sync(|| Err("disk")), Err("disk"));
        let mut ran = false;
        g.sync(|| {
            ran = true;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(ran);
    }
}
