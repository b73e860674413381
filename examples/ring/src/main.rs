//! Token ring: rank 0 starts a token, every rank adds its rank number and
//! passes it on, for a number of laps; rank 0 checks the total. Prints
//! `ring: PASS` / `ring: FAIL` and exits non-zero on failure.
//! Arguments: `-- [LAPS]` (default 1000).
#![no_std]
#![no_main]

use mpi::traits::*;
use toro::println;

toro::main!(main);

fn main() -> i32 {
    let universe = mpi::initialize().expect("MPI initialize");
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let laps: u64 = toro::rt::args().first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let next = world.process_at_rank((rank + 1) % size);
    let previous = world.process_at_rank((rank + size - 1) % size);
    println!("ring: rank {rank} of {size} on core {}", toro::rt::current_core());
    world.barrier();
    let start = mpi::time();
    let mut token = 0u64;
    for lap in 0..laps {
        if rank == 0 {
            next.send(&token);
            let (t, status) = previous.receive::<u64>();
            assert_eq!(status.source_rank(), (size - 1) % size);
            token = t;
        } else {
            let (t, _) = previous.receive::<u64>();
            token = t + rank as u64;
            next.send(&token);
        }
        let _ = lap;
    }
    let elapsed = mpi::time() - start;
    if rank != 0 {
        return 0;
    }
    let per_lap: u64 = (0..size as u64).sum();
    let expected = laps * per_lap;
    let ok = token == expected;
    println!(
        "ring: {size} ranks, {laps} laps, token {token} (expected {expected}), {:.2} us per hop: {}",
        elapsed * 1e6 / (laps as f64 * size as f64),
        if ok { "PASS" } else { "FAIL" }
    );
    if ok { 0 } else { 1 }
}
