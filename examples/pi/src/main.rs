//! π by midpoint integration of 4/(1+x²) over [0, 1]: every rank sums a
//! strided share of the intervals, `all_reduce_into` adds the shares. The
//! result is checked against a sequential sum of the same intervals and
//! against π. Prints `pi: PASS` / `pi: FAIL`. Arguments: `-- [INTERVALS]`.
#![no_std]
#![no_main]

use mpi::collective::SystemOperation;
use mpi::traits::*;
use toro::println;

toro::main!(main);

fn f(x: f64) -> f64 {
    4.0 / (1.0 + x * x)
}

fn main() -> i32 {
    let universe = mpi::initialize().expect("MPI initialize");
    let world = universe.world();
    let (rank, size) = (world.rank() as u64, world.size() as u64);
    let n: u64 = toro::rt::args().first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let h = 1.0 / n as f64;
    let start = mpi::time();
    let mut mine = 0.0f64;
    let mut i = rank;
    while i < n {
        mine += f(h * (i as f64 + 0.5));
        i += size;
    }
    let mine = mine * h;
    let mut pi = 0.0f64;
    world.all_reduce_into(&mine, &mut pi, SystemOperation::sum());
    let elapsed = mpi::time() - start;
    // Every rank holds the same bits (allreduce is bit-identical everywhere).
    let mut low = 0.0f64;
    let mut high = 0.0f64;
    world.all_reduce_into(&pi, &mut low, SystemOperation::min());
    world.all_reduce_into(&pi, &mut high, SystemOperation::max());
    if rank != 0 {
        return 0;
    }
    // Sequential reference: the same intervals, summed per rank share in the same order.
    let mut reference = 0.0f64;
    for r in 0..size {
        let mut part = 0.0f64;
        let mut i = r;
        while i < n {
            part += f(h * (i as f64 + 0.5));
            i += size;
        }
        reference += part * h;
    }
    let error = (pi - core::f64::consts::PI).abs();
    let ok = (pi - reference).abs() <= 1e-12 && error < 1e-9 && low.to_bits() == high.to_bits();
    println!(
        "pi: {size} ranks, {n} intervals: {pi:.15} (sequential {reference:.15}, error {error:.2e}), {:.3} ms: {}",
        elapsed * 1e3,
        if ok { "PASS" } else { "FAIL" }
    );
    if ok { 0 } else { 1 }
}
