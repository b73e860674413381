//! Monotonic time from the TSC, calibrated by the kernel against the PIT.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::rdtsc;

static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick, as a 32.32 fixed-point number.
static NS_PER_TICK_FP32: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(1);
/// APIC timer ticks per nanosecond, as a 32.32 fixed-point number.
static TIMER_TICKS_PER_NS_FP32: AtomicU64 = AtomicU64::new(1 << 32);

pub(crate) fn init(tsc_hz: u64, tsc_at_boot: u64, apic_timer_hz: u64) {
    TSC_HZ.store(tsc_hz, Ordering::Relaxed);
    if apic_timer_hz != 0 {
        TIMER_TICKS_PER_NS_FP32.store(((apic_timer_hz as u128) << 32) as u64 / 1_000_000_000 | 1, Ordering::Relaxed);
    }
    TSC_AT_BOOT.store(tsc_at_boot, Ordering::Relaxed);
    NS_PER_TICK_FP32.store(((1_000_000_000u128 << 32) / tsc_hz as u128) as u64, Ordering::Relaxed);
}

/// Nanoseconds since the kernel started.
pub fn now_ns() -> u64 {
    let ticks = rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ((ticks as u128 * NS_PER_TICK_FP32.load(Ordering::Relaxed) as u128) >> 32) as u64
}

/// Seconds since the kernel started, as f64 (like `MPI_Wtime`).
pub fn now_secs() -> f64 {
    now_ns() as f64 * 1e-9
}

/// Resolution of `now_ns` in seconds (one TSC tick).
pub fn resolution_secs() -> f64 {
    1.0 / TSC_HZ.load(Ordering::Relaxed) as f64
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// APIC timer ticks in `ns` nanoseconds, for a timed halt (at least 1).
pub(crate) fn timer_ticks(ns: u64) -> u32 {
    let ticks = (ns as u128 * TIMER_TICKS_PER_NS_FP32.load(Ordering::Relaxed) as u128) >> 32;
    ticks.clamp(1, u32::MAX as u128) as u32
}

/// Busy-waits (no yield) for `ns` nanoseconds.
pub fn spin_for_ns(ns: u64) {
    let end = now_ns() + ns;
    while now_ns() < end {
        core::hint::spin_loop();
    }
}
