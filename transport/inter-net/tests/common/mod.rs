//! The simulated clock the host tests drive the nodes with: microseconds, per test
//! thread, advanced by the test (a retransmission timeout costs rounds, not seconds).

use std::cell::Cell;

thread_local! {
    static NOW_US: Cell<u64> = const { Cell::new(1) };
}

/// The node's `Clock`.
pub fn now_us() -> u64 {
    NOW_US.with(|now| now.get())
}

pub fn advance(us: u64) {
    NOW_US.with(|now| now.set(now.get() + us));
}
