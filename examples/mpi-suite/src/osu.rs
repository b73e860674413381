//! OSU-style micro-benchmarks over Toro MPI (methodology of osu_latency,
//! osu_bw and the osu collective tests): warm-up iterations, then timed
//! iterations; latency = half the ping-pong round trip; bandwidth = windows
//! of 64 immediate sends (fewer above 512 KiB, to fit the
//! receive buffers in 32 MiB) then a 4-byte ack; collectives = average time per
//! call, max over ranks. One line per figure: `osu: <name> <size> <value> <unit>`.
//! Arguments: `-- [ITERATIONS]` (default 10000; large sizes use fewer).
//! `-- algorithms [ITERATIONS]`: every all-reduce and broadcast algorithm forced in
//! turn (`mpi::collective::tuning`), 256 B .. 2 MiB, to place the thresholds of
//! `mpi/src/collective/selection.rs`: `osu: <collective> <algorithm> <ranks> <size> B <us> us`.
//! `-- flat [ITERATIONS]`: the 8 B collectives with hierarchical collectives turned off
//! (`tuning::force_flat`), to compare with the default across VMs.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use mpi::collective::SystemOperation;
use mpi::request::{scope, wait_all};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use toro::println;

toro::main!(main);

/// Iterations per batch for the "best batch" figure: on a shared host a preempted vCPU
/// inflates the mean; the fastest batch shows what the code path itself costs.
const BATCH: usize = 100;

/// Iterations per batch for a run of `iterations`: [`BATCH`], or the whole run when it
/// is shorter (one batch, so the best batch is the mean rather than no figure at all).
fn batch_of(iterations: usize) -> usize {
    BATCH.min(iterations).max(1)
}

/// One-way latency in µs: (mean over all iterations, mean of the fastest batch of `BATCH`).
fn latency(world: &SimpleCommunicator, size: usize, iterations: usize) -> (f64, f64) {
    let rank = world.rank();
    let peer = world.process_at_rank(1 - rank);
    let out = vec![1u8; size];
    let mut inp = vec![0u8; size];
    let warm = iterations / 10;
    let mut start = 0.0;
    let mut batch_start = 0.0;
    let batch = batch_of(iterations);
    let mut best = f64::MAX;
    for i in 0..=warm + iterations {
        if i == warm {
            world.barrier();
            start = mpi::time();
            batch_start = start;
        }
        if i > warm && (i - warm) % batch == 0 {
            let now = mpi::time();
            best = best.min(now - batch_start);
            batch_start = now;
        }
        if i == warm + iterations {
            break;
        }
        if rank == 0 {
            peer.send(&out[..]);
            peer.receive_into(&mut inp[..]);
        } else {
            peer.receive_into(&mut inp[..]);
            peer.send(&out[..]);
        }
    }
    let mean = (mpi::time() - start) * 1e6 / (2.0 * iterations.max(1) as f64);
    (mean, best * 1e6 / (2.0 * batch as f64))
}

fn bandwidth(world: &SimpleCommunicator, size: usize, loops: usize) -> f64 {
    // osu_bw's window is 64; above 512 KiB it shrinks so the receive buffers fit in 32 MiB.
    let window = (32usize << 20).checked_div(size).unwrap_or(64).clamp(1, 64);
    let rank = world.rank();
    let peer = world.process_at_rank(1 - rank);
    let out = vec![2u8; size];
    let mut inp: Vec<Vec<u8>> = (0..window).map(|_| vec![0u8; size]).collect();
    let warm = (loops / 10).max(1);
    let mut start = 0.0;
    for i in 0..warm + loops {
        if i == warm {
            world.barrier();
            start = mpi::time();
        }
        if rank == 0 {
            scope(|s| {
                let requests: Vec<_> = (0..window).map(|_| peer.immediate_send(s, &out[..])).collect();
                wait_all(requests);
            });
            peer.receive::<u32>();
        } else {
            scope(|s| {
                let requests: Vec<_> = inp.iter_mut().map(|b| peer.immediate_receive_into(s, &mut b[..])).collect();
                wait_all(requests);
            });
            peer.send(&0u32);
        }
    }
    let secs = mpi::time() - start;
    (size * window * loops) as f64 / secs / 1e9
}

fn collective(world: &SimpleCommunicator, name: &str, iterations: usize, mut f: impl FnMut()) {
    for _ in 0..iterations / 10 {
        f();
    }
    world.barrier();
    let start = mpi::time();
    let mut batch_start = start;
    let batch = batch_of(iterations);
    let mut best = f64::MAX;
    for i in 0..=iterations {
        if i > 0 && i % batch == 0 {
            let now = mpi::time();
            best = best.min(now - batch_start);
            batch_start = now;
        }
        if i == iterations {
            break;
        }
        f();
    }
    let mine = [(mpi::time() - start) * 1e6 / iterations.max(1) as f64, best * 1e6 / batch as f64];
    let mut worst = [0.0f64; 2];
    world.all_reduce_into(&mine[..], &mut worst[..], SystemOperation::max());
    if world.rank() == 0 {
        println!("osu: {name} {} ranks 8 B {:.3} us (best batch {:.3} us)", world.size(), worst[0], worst[1]);
    }
}

/// Average time of one call (µs), max over ranks.
fn timed(world: &SimpleCommunicator, iterations: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..(iterations / 10).max(1) {
        f();
    }
    world.barrier();
    let start = mpi::time();
    for _ in 0..iterations {
        f();
    }
    let mine = (mpi::time() - start) * 1e6 / iterations as f64;
    let mut worst = 0.0f64;
    world.all_reduce_into(&mine, &mut worst, SystemOperation::max());
    worst
}

fn algorithms(world: &SimpleCommunicator, iterations: usize) {
    use mpi::collective::tuning::{force_all_reduce, force_broadcast, AllReduce, Broadcast};
    let (rank, size) = (world.rank(), world.size());
    let mut bytes = 256usize;
    while bytes <= 2 << 20 {
        // Fewer iterations for large messages: about the same time per size.
        let n = (iterations * 1024 / bytes.max(1024)).max(5);
        let x = vec![1.0f32; bytes / 4];
        let mut y = vec![0.0f32; bytes / 4];
        for algorithm in [AllReduce::RecursiveDoubling, AllReduce::Rabenseifner, AllReduce::Ring] {
            force_all_reduce(Some(algorithm));
            let us = timed(world, n, || world.all_reduce_into(&x[..], &mut y[..], SystemOperation::sum()));
            if rank == 0 {
                println!("osu: allreduce {algorithm:?} {size} {bytes} B {us:.2} us");
            }
        }
        force_all_reduce(None);
        let mut b = vec![rank as u8; bytes];
        for algorithm in [Broadcast::Binomial, Broadcast::ScatterAllGather] {
            force_broadcast(Some(algorithm));
            let us = timed(world, n, || world.process_at_rank(0).broadcast_into(&mut b[..]));
            if rank == 0 {
                println!("osu: bcast {algorithm:?} {size} {bytes} B {us:.2} us");
            }
        }
        force_broadcast(None);
        bytes *= 2;
    }
    if rank == 0 {
        println!("osu: done");
    }
}

fn main() -> i32 {
    let universe = mpi::initialize().expect("MPI initialize");
    let world = universe.world();
    if toro::rt::args().first().map(|a| a.as_str()) == Some("algorithms") {
        let iterations = toro::rt::args().get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
        algorithms(&world, iterations);
        return 0;
    }
    let mut args = toro::rt::args();
    if args.first().map(|a| a.as_str()) == Some("flat") {
        mpi::collective::tuning::force_flat(true);
        args.remove(0);
        if world.rank() == 0 {
            println!("osu: hierarchical collectives off");
        }
    }
    let iterations: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let (rank, size) = (world.rank(), world.size());
    if size == 2 {
        for bytes in [8usize, 64, 128, 256, 1024] {
            let (us, best) = latency(&world, bytes, iterations);
            if rank == 0 {
                println!("osu: latency {bytes} B {us:.3} us (best batch {best:.3} us)");
            }
        }
        for (bytes, loops) in [(64usize << 10, iterations / 50), (1 << 20, iterations / 500), (4 << 20, iterations / 2000)] {
            let gbs = bandwidth(&world, bytes, loops.max(3));
            if rank == 0 {
                println!("osu: bandwidth {} KiB {gbs:.2} GB/s", bytes >> 10);
            }
        }
    }
    let root = world.process_at_rank(0);
    let x = [rank as u64];
    let mut y = [0u64];
    let mut all = vec![0u64; size as usize];
    collective(&world, "barrier", iterations, || world.barrier());
    collective(&world, "bcast", iterations, || root.broadcast_into(&mut y[..]));
    collective(&world, "reduce", iterations, || {
        if rank == 0 { root.reduce_into_root(&x[..], &mut y[..], SystemOperation::sum()) } else { root.reduce_into(&x[..], SystemOperation::sum()) }
    });
    collective(&world, "allreduce", iterations, || world.all_reduce_into(&x[..], &mut y[..], SystemOperation::sum()));
    collective(&world, "gather", iterations, || {
        if rank == 0 { root.gather_into_root(&x[..], &mut all[..]) } else { root.gather_into(&x[..]) }
    });
    collective(&world, "scatter", iterations, || {
        if rank == 0 { root.scatter_into_root(&all[..], &mut y[..]) } else { root.scatter_into(&mut y[..]) }
    });
    if rank == 0 {
        println!("osu: done");
    }
    0
}
