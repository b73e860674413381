//! TSC frequency from the PIT: CPUID gives none under KVM PVM or TCG.

use crate::cpu::{inb, outb, rdtsc};

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 4 ms of PIT ticks. Each sample costs a few VM
/// exits under PVM (≈0.3 ms); narrow sample brackets keep the error small.
const WINDOW_TICKS: u16 = 4773;
/// Give up after this many TSC cycles (a machine without a working PIT).
const GIVE_UP_CYCLES: u64 = 20_000_000_000;
pub const FALLBACK_HZ: u64 = 2_000_000_000;

fn read_channel2() -> u16 {
    outb(0x43, 0x80); // latch channel 2
    let lo = inb(0x42) as u16;
    let hi = inb(0x42) as u16;
    hi << 8 | lo
}

/// A PIT reading bracketed by two TSC reads. Three port accesses, each a
/// VM exit: if the vCPU is descheduled in between, the bracket is wide, so
/// the narrowest of a few tries is kept.
fn sample() -> (u64, u16) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..4 {
        let a = rdtsc();
        let c = read_channel2();
        let b = rdtsc();
        if b - a < best.0 {
            best = (b - a, a + (b - a) / 2, c);
        }
    }
    (best.1, best.2)
}

/// One measurement over WINDOW_TICKS of PIT channel 2.
fn measure() -> Option<u64> {
    outb(0x61, (inb(0x61) & !0x02) | 0x01); // gate channel 2 on, speaker off
    outb(0x43, 0xB0); // channel 2, lo/hi byte, mode 0
    outb(0x42, 0xFF);
    outb(0x42, 0xFF);
    let (t0, c0) = sample();
    let start = rdtsc();
    loop {
        let c = read_channel2();
        let ticks = c0.wrapping_sub(c);
        if (WINDOW_TICKS..0x8000).contains(&ticks) {
            let (t, c) = sample();
            let ticks = c0.wrapping_sub(c) as u64;
            return Some((t - t0) as u128 as u64 * PIT_HZ / ticks);
        }
        if rdtsc() - start > GIVE_UP_CYCLES {
            return None;
        }
    }
}

/// Ticks per second of the TSC, or `None` when the PIT does not count.
/// A busy host can deschedule the vCPU mid-measurement, so measurements
/// are repeated until two in a row agree within 0.2 % (at most 6; then the
/// median).
pub fn calibrate_tsc() -> Option<u64> {
    let mut seen = [0u64; 6];
    for i in 0..seen.len() {
        seen[i] = measure()?;
        if i > 0 {
            let (a, b) = (seen[i - 1], seen[i]);
            if a.abs_diff(b) * 500 <= a {
                return Some(a / 2 + b / 2);
            }
        }
    }
    seen.sort_unstable();
    Some(seen[seen.len() / 2])
}
