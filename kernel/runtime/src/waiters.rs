//! Per-core wait lists: what a transport's "wait on core j / notify core j"
//! (intra-vbus `Notify`) becomes on top of the scheduler.
//!
//! - [`wait`]`(core)` blocks the calling thread until [`notify`]`(core)`; the
//!   other threads of its core run meanwhile. With nothing else to run the
//!   core spins, then halts until the IPI of the notify that makes a waiter
//!   runnable (the scheduler's idle loop). Nothing else ends such a wait: a
//!   waiter must be on the list before the last moment its event could
//!   happen without a notify (a transport's "arm, re-check"), or it sleeps
//!   for good.
//! - [`wait_until`]`(core, deadline)` blocks the same way, and lets the core
//!   halt: a core with nothing to run whose waiters all gave a deadline halts
//!   until the earliest one (the APIC timer), an IPI or a device interrupt
//!   (`route_irq`), then wakes all of them to look again. For a waiter that
//!   learns of its event through an interrupt or a notify, and must look on
//!   its own no later than the deadline (a network stack's timers).
//! - [`notify`]`(core)` makes every thread waiting on `core` runnable; the
//!   scheduler sends the wake-up IPI only if that core announced it halts.
//!   A notify that finds nobody waiting leaves a token: the next `wait` on
//!   that core returns at once (no lost wake-up between a transport's
//!   "arm, re-check" and the actual block).
//! - [`wake_all`]`(core)` wakes the waiters without leaving a token (to make
//!   waiters re-check after a shared wait condition changed).
//!
//! Every list is a spin lock held for a few instructions, never across a
//! context switch; `wait` may return early (callers re-check).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::{Mutex, Once};

use crate::sched::{self, Thread};

struct WaitList {
    /// A notify arrived while nobody waited.
    token: bool,
    /// Each waiting thread, with its deadline (`now_ns` clock) if it gave one.
    threads: Vec<(Arc<Thread>, Option<u64>)>,
}

static LISTS: Once<Vec<Mutex<WaitList>>> = Once::new();
/// Per core: no later than the earliest deadline of its waiters (`u64::MAX`:
/// none), for the scheduler to honour deadlines on a core that never idles.
static EARLIEST: Once<Vec<AtomicU64>> = Once::new();

/// Called once at boot, with the scheduler: the lists are allocated then,
/// not by whichever idle core first looks at them (which would show up as
/// an unexplained allocation in the middle of an application's run).
pub(crate) fn init(cores: usize) {
    LISTS.call_once(|| (0..cores).map(|_| Mutex::new(WaitList { token: false, threads: Vec::with_capacity(8) })).collect());
    EARLIEST.call_once(|| (0..cores).map(|_| AtomicU64::new(u64::MAX)).collect());
}

fn earliest(core: usize) -> &'static AtomicU64 {
    &EARLIEST.get().expect("waiters used before the scheduler started")[core]
}

fn list(core: usize) -> &'static Mutex<WaitList> {
    let lists = LISTS.get().expect("waiters used before the scheduler started");
    lists.get(core).unwrap_or_else(|| panic!("waiters: no core {core} (this VM has {})", lists.len()))
}

/// Blocks the calling thread until `notify(core)` (or returns at once if a
/// notify for `core` is pending). May return spuriously.
pub fn wait(core: usize) {
    wait_inner(core, None);
}

/// Blocks the calling thread until `notify(core)`, or about `deadline_ns`
/// (`now_ns` clock) at the latest; the core may halt meanwhile (see the
/// module docs). May return spuriously.
pub fn wait_until(core: usize, deadline_ns: u64) {
    wait_inner(core, Some(deadline_ns));
}

fn wait_inner(core: usize, deadline: Option<u64>) {
    {
        let mut l = list(core).lock();
        if l.token {
            l.token = false;
            return;
        }
        let me = sched::current_arc();
        match l.threads.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &me)) {
            Some(entry) => entry.1 = deadline,
            None => l.threads.push((me, deadline)),
        }
        if let Some(deadline) = deadline {
            earliest(core).fetch_min(deadline, Ordering::Relaxed);
        }
    }
    // A notify between the unlock and here finds us in the list and leaves
    // a wake-up token in our thread state: `block` then returns at once.
    sched::block();
}

fn wake_waiters(core: usize, token: bool) {
    let n = {
        let mut l = list(core).lock();
        if token {
            l.token = true;
        }
        l.threads.len()
    };
    // One at a time, outside the lock: waking may send an IPI (a trap, tens
    // of µs under PVM), which must not hold up other cores on this list.
    // Threads that register meanwhile are woken too or wait for the next notify.
    for _ in 0..n {
        let t = {
            let mut l = list(core).lock();
            let t = l.threads.pop();
            if l.threads.is_empty() {
                earliest(core).store(u64::MAX, Ordering::Relaxed);
            }
            t
        };
        match t {
            Some((t, _)) => sched::wake(&t),
            None => break,
        }
    }
}

/// Makes every thread waiting on `core` runnable; leaves a token if none waits.
pub fn notify(core: usize) {
    wake_waiters(core, true);
}

/// Makes every thread waiting on `core` runnable, without a token.
pub fn wake_all(core: usize) {
    wake_waiters(core, false);
}

/// Whether any thread waits on `core` now.
pub fn has_waiters(core: usize) -> bool {
    !list(core).lock().threads.is_empty()
}

/// Wakes `core`'s waiters if one of their deadlines has passed: `yield_now`
/// calls this, for a core that keeps running other threads (its idle loop,
/// which halts until the deadline, never runs then).
pub(crate) fn wake_expired(core: usize) {
    let due = earliest(core).load(Ordering::Relaxed);
    if due != u64::MAX && crate::time::now_ns() >= due {
        wake_all(core);
    }
}

/// What the threads waiting on a core allow its idle loop to do.
pub(crate) enum Waiting {
    /// No thread waits, or some thread waits without a deadline: spin, then
    /// halt until an IPI (a notify's).
    ForIpi,
    /// Every waiter gave a deadline: halt at once until the earliest.
    Until(u64),
}

pub(crate) fn waiting(core: usize) -> Waiting {
    let l = list(core).lock();
    let mut earliest = None::<u64>;
    for (_, deadline) in &l.threads {
        match deadline {
            None => return Waiting::ForIpi,
            Some(d) => earliest = Some(earliest.map_or(*d, |e| e.min(*d))),
        }
    }
    earliest.map_or(Waiting::ForIpi, Waiting::Until)
}
