//! The few concurrency primitives the ring uses, switched between `core` and
//! loom so that the very same ring code is model-checked (`--cfg loom`).
//!
//! Only plain atomic loads and stores and one `fence(SeqCst)` are used on the
//! data path: no locks, no read-modify-write atomics.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU16, Ordering};
#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicBool, AtomicU16, Ordering};

/// Called once per empty poll in busy-wait loops. Under loom it yields so the
/// model checker can schedule the other thread.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// Memory written by one side of a ring and read by the other, ordered by the
/// ring indices. Under loom this is loom's `UnsafeCell`, which checks that
/// every access is ordered by a happens-before edge.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell as SharedCell;

/// Memory written by one side of a ring and read by the other, ordered by the
/// ring indices (same closure API as loom's `UnsafeCell`).
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct SharedCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> SharedCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
