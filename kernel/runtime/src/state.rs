//! The block/wake state of a thread: a wake-up that arrives before the
//! thread has finished blocking is never lost (it becomes a token that the
//! next block consumes).

use core::sync::atomic::{AtomicU8, Ordering};

const RUNNING: u8 = 0;
const BLOCKING: u8 = 1;
const BLOCKED: u8 = 2;
const RUNNABLE: u8 = 3;
const NOTIFIED: u8 = 4;

pub struct ThreadState(AtomicU8);

impl ThreadState {
    pub const fn new_runnable() -> Self {
        ThreadState(AtomicU8::new(RUNNABLE))
    }

    /// The thread wants to block. False: a wake-up was pending, consumed
    /// now, so the thread goes on running.
    pub fn begin_block(&self) -> bool {
        match self.0.compare_exchange(RUNNING, BLOCKING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(_) => {
                // NOTIFIED: consume the token.
                self.0.store(RUNNING, Ordering::Release);
                false
            }
        }
    }

    /// After the thread's context is saved. False: woken meanwhile; the
    /// scheduler puts it back on a run queue itself.
    pub fn commit_block(&self) -> bool {
        match self.0.compare_exchange(BLOCKING, BLOCKED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(_) => {
                self.0.store(RUNNABLE, Ordering::Release);
                false
            }
        }
    }

    /// A wake-up. True: the thread was blocked and the caller must queue it.
    pub fn wake(&self) -> bool {
        let mut s = self.0.load(Ordering::Acquire);
        loop {
            let next = match s {
                BLOCKED => RUNNABLE,
                RUNNING | BLOCKING => NOTIFIED,
                _ => return false,
            };
            match self.0.compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return s == BLOCKED,
                Err(now) => s = now,
            }
        }
    }

    /// The scheduler is about to run the thread.
    pub fn set_running(&self) {
        let _ = self.0.compare_exchange(RUNNABLE, RUNNING, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;

    #[test]
    fn sequences() {
        let s = ThreadState::new_runnable();
        s.set_running();
        assert!(!s.wake(), "waking a running thread leaves a token");
        assert!(!s.begin_block(), "the token is consumed instead of blocking");
        assert!(s.begin_block());
        assert!(s.commit_block());
        assert!(s.wake(), "a blocked thread must be queued by the waker");
        assert!(!s.wake(), "a runnable thread is not queued twice");
        s.set_running();
        assert!(s.begin_block());
        assert!(!s.wake());
        assert!(!s.commit_block(), "woken between begin and commit: stays runnable");
        s.set_running();
        assert!(s.begin_block());
    }

    /// A sleeper/waker pair on real threads: every wake-up is seen, none is
    /// lost, and a blocked thread is queued exactly once per block.
    #[test]
    fn no_lost_wakeups_under_races() {
        let state = Arc::new(ThreadState::new_runnable());
        state.set_running();
        let requeues = Arc::new(AtomicUsize::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        const ROUNDS: usize = 20_000;
        let (s2, q2, p2, d2) = (state.clone(), requeues.clone(), pending.clone(), done.clone());
        let waker = std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                p2.fetch_add(1, Ordering::SeqCst);
                if s2.wake() {
                    q2.fetch_add(1, Ordering::SeqCst);
                }
            }
            d2.store(true, Ordering::SeqCst);
        });
        // The "thread": consumes work; blocks when none is left.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut consumed = 0;
        while consumed < ROUNDS {
            assert!(std::time::Instant::now() < deadline, "lost wake-up: stuck at {consumed}");
            let n = pending.swap(0, Ordering::SeqCst);
            consumed += n;
            if n > 0 || consumed == ROUNDS {
                continue;
            }
            if state.begin_block() {
                if state.commit_block() {
                    // Blocked: wait until the waker queued us (or finished).
                    while requeues.load(Ordering::SeqCst) == 0 && !done.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                    if requeues.swap(0, Ordering::SeqCst) == 0 {
                        // The waker finished after its last wake queued nothing: that
                        // is only possible when our state was not BLOCKED then.
                        assert!(pending.load(Ordering::SeqCst) > 0 || consumed == ROUNDS, "blocked with nobody to wake us");
                    }
                }
                state.set_running();
            }
        }
        waker.join().unwrap();
    }
}
