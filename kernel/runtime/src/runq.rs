//! A core's run queue and its half of the halt/wake protocol: the core
//! announces it is about to halt and re-checks its queue; a producer queues
//! and then looks at the announcement. Whichever goes second sees the
//! other, so a thread is never queued on a halted core without an IPI.

use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spin::Mutex;

pub struct RunQueue<T> {
    queue: Mutex<VecDeque<T>>,
    queued: AtomicUsize,
    sleeping: AtomicBool,
}

impl<T> RunQueue<T> {
    pub fn new() -> Self {
        RunQueue { queue: Mutex::new(VecDeque::with_capacity(64)), queued: AtomicUsize::new(0), sleeping: AtomicBool::new(false) }
    }

    /// Queues `t`. True: the owning core announced a halt and must be sent the wake-up IPI.
    /// Only the first push after an announcement gets true: the IPI it sends wakes the
    /// owner for everything queued (a core that takes 0.1–1 ms to wake under PVM would
    /// otherwise collect an IPI, a trap for its sender, per thread woken meanwhile).
    #[must_use]
    pub fn push(&self, t: T) -> bool {
        {
            let mut q = self.queue.lock();
            q.push_back(t);
            self.queued.fetch_add(1, Ordering::SeqCst);
        }
        self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst)
    }

    pub fn pop(&self) -> Option<T> {
        let mut q = self.queue.lock();
        let t = q.pop_front();
        if t.is_some() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        t
    }

    /// Cheap check without the lock (the owner's idle loop polls this).
    pub fn is_empty(&self) -> bool {
        self.queued.load(Ordering::Relaxed) == 0
    }

    /// The owner is about to halt. True: nothing is queued, halting is safe
    /// (a later push will ask for an IPI). False: work arrived, don't halt.
    pub fn announce_halt(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) != 0 {
            self.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The owner woke up (or decided not to halt).
    pub fn end_halt(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

impl<T> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn fifo_and_counts() {
        let q = RunQueue::new();
        assert!(q.is_empty());
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(!q.is_empty());
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_halting_owner_gets_an_ipi_and_a_busy_one_does_not() {
        let q = RunQueue::new();
        assert!(q.announce_halt());
        assert!(q.push(7), "pushing onto a halting core must ask for the IPI");
        assert!(!q.push(8), "one IPI per halt");
        q.end_halt();
        assert_eq!((q.pop(), q.pop()), (Some(7), Some(8)));
        assert!(!q.push(8));
        assert!(!q.announce_halt(), "work is queued: the owner must not halt");
        assert!(!q.push(9), "the refused halt left no announcement behind");
    }

    /// Producers on several threads, an owner that "halts" (parks) whenever
    /// its queue is empty; the IPI is an unpark. Every item arrives and the
    /// owner never sleeps through one (a park timeout would expose that).
    #[test]
    fn no_item_is_stranded_on_a_halted_core() {
        const PRODUCERS: usize = 3;
        const ITEMS: usize = 20_000;
        let q = Arc::new(RunQueue::new());
        let owner_done = Arc::new(AtomicBool::new(false));
        let q2 = q.clone();
        let done2 = owner_done.clone();
        let owner = std::thread::spawn(move || {
            let (mut got, mut stranded) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(30);
            while got < PRODUCERS * ITEMS {
                assert!(Instant::now() < deadline, "owner stuck at {got}");
                if q2.pop().is_some() {
                    got += 1;
                    continue;
                }
                if q2.announce_halt() {
                    let before = Instant::now();
                    std::thread::park_timeout(Duration::from_secs(1));
                    if before.elapsed() >= Duration::from_secs(1) && !q2.is_empty() {
                        stranded += 1;
                    }
                    q2.end_halt();
                }
            }
            done2.store(true, Ordering::SeqCst);
            stranded
        });
        let owner_thread = owner.thread().clone();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|_| {
                let q = q.clone();
                let t = owner_thread.clone();
                std::thread::spawn(move || {
                    for i in 0..ITEMS {
                        if q.push(i) {
                            t.unpark();
                        }
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(owner.join().unwrap(), 0, "the owner slept through queued work");
        assert!(owner_done.load(Ordering::SeqCst));
    }
}
