//! Spawns a thread that migrates through every core, leaving a box
//! allocated on each for the next core to free, and prints one line per
//! core with a floating-point result checked against its exact value.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use toro_rt::{math, println};

toro_rt::main!(main);

/// Σ 1/2^k for k < 52 + √(k²) checks: exact in binary floating point.
fn fp_work(core: usize) -> f64 {
    let mut sum = 0.0;
    for k in 0..52 {
        sum += math::ldexp(1.0, -k);
    }
    sum + math::sqrt((core * core) as f64)
}

fn main() -> i32 {
    let cores = toro_rt::core_count();
    let tour = toro_rt::spawn(move || {
        let mut carried: Option<Box<[u64; 64]>> = None;
        let mut lines = Vec::new();
        for core in 0..cores {
            toro_rt::migrate(core);
            // Free on this core what the previous core allocated.
            drop(carried.take());
            carried = Some(Box::new([core as u64; 64]));
            let x = fp_work(core);
            let exact = 2.0 - math::ldexp(1.0, -51) + core as f64;
            println!("hello from core {} of {}: fp {:.17} {}", toro_rt::current_core(), cores, x,
                     if x == exact { "exact" } else { "WRONG" });
            lines.push(x == exact);
        }
        lines.iter().all(|ok| *ok)
    });
    if tour.join() { 0 } else { 1 }
}
