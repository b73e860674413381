//! TSC frequency from the PIT: CPUID gives none under KVM PVM or TCG.

use crate::cpu::{inb, outb, rdtsc};

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 5 ms of PIT ticks. Each sample costs a few VM
/// exits under PVM (≈0.3 ms); the sample midpoints keep the error small.
const WINDOW_TICKS: u16 = 5966;
/// Give up after this many TSC cycles (a machine without a working PIT).
const GIVE_UP_CYCLES: u64 = 20_000_000_000;
pub const FALLBACK_HZ: u64 = 2_000_000_000;

fn read_channel2() -> u16 {
    outb(0x43, 0x80); // latch channel 2
    let lo = inb(0x42) as u16;
    let hi = inb(0x42) as u16;
    hi << 8 | lo
}

fn sample() -> (u64, u16) {
    let a = rdtsc();
    let c = read_channel2();
    let b = rdtsc();
    (a + (b - a) / 2, c)
}

/// Ticks per second of the TSC, or `None` when the PIT does not count.
pub fn calibrate_tsc() -> Option<u64> {
    outb(0x61, (inb(0x61) & !0x02) | 0x01); // gate channel 2 on, speaker off
    outb(0x43, 0xB0); // channel 2, lo/hi byte, mode 0
    outb(0x42, 0xFF);
    outb(0x42, 0xFF);
    let (t0, c0) = sample();
    loop {
        let (t, c) = sample();
        let ticks = c0.wrapping_sub(c);
        if ticks >= WINDOW_TICKS && ticks < 0x8000 {
            return Some((t - t0) as u128 as u64 * PIT_HZ / ticks as u64);
        }
        if t - t0 > GIVE_UP_CYCLES {
            return None;
        }
    }
}
