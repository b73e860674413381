//! Small collectives through the VM's shared memory (`collective::shm`): ranks that
//! sleep past the spin budget and must be woken, cooperative ranks sharing cores,
//! communicators from one split sharing a context id, the reuse rule under a flood of
//! back-to-back collectives, rank-order folding and count errors.

use crate as mpi;
use mpi::collective::SystemOperation;
use mpi::error::ErrorClass;
use mpi::testing::{catch_error, Fabric, WorldOptions};
use mpi::traits::*;
use std::time::Duration;
use std::vec;
use std::vec::Vec;

use super::harness::spawn_world_with;

fn world(size: usize, cores: usize, cooperative: bool) -> WorldOptions {
    let mut options = WorldOptions::new(size);
    options.fabric = Fabric::IntraVbus { cores };
    options.cooperative = cooperative;
    options.timeout = Duration::from_secs(60);
    options
}

/// One rank arrives 30 ms late at a barrier, a broadcast, a reduce and an all-reduce:
/// the others spin past their budget, sleep, and must be woken by its arrival.
#[test]
fn late_rank_wakes_sleeping_ranks() {
    for (size, cores, cooperative) in [(2, 0, false), (4, 0, false), (6, 2, true)] {
        let results = spawn_world_with(world(size, cores, cooperative), move |universe| {
            let world = universe.world();
            let rank = world.rank();
            let mut seen = Vec::new();
            for late in 0..world.size() {
                let pause = || {
                    if rank == late {
                        std::thread::sleep(Duration::from_millis(30));
                    }
                };
                pause();
                world.barrier();
                pause();
                let mut value = [0u64; 2];
                if rank == late {
                    value = [late as u64, 7];
                }
                world.process_at_rank(late).broadcast_into(&mut value[..]);
                seen.push(value[0] * 10 + value[1]);
                pause();
                let mut sum = [0i64];
                world.all_reduce_into(&[rank as i64 + 1][..], &mut sum[..], SystemOperation::sum());
                seen.push(sum[0] as u64);
                pause();
                let root = world.process_at_rank(late);
                if rank == late {
                    let mut max = [0u32];
                    root.reduce_into_root(&[rank as u32][..], &mut max[..], SystemOperation::max());
                    seen.push(max[0] as u64);
                } else {
                    root.reduce_into(&[rank as u32][..], SystemOperation::max());
                }
            }
            seen
        });
        let n = size as u64;
        for (rank, seen) in results.iter().enumerate() {
            let mut expected = Vec::new();
            for late in 0..n {
                expected.push(late * 10 + 7);
                expected.push(n * (n + 1) / 2);
                if rank as u64 == late {
                    expected.push(n - 1);
                }
            }
            assert_eq!(seen, &expected, "size {size}, rank {rank}");
        }
    }
}

/// Thousands of back-to-back small collectives with no barrier between them, ranks of
/// uneven speed: a rank may be up to seven collectives ahead of another, never more, and every
/// result must be the one of its own collective (the reuse rule of the eight lines).
#[test]
fn back_to_back_collectives_keep_their_own_data() {
    for (size, cores, cooperative) in [(3, 0, false), (8, 2, true)] {
        spawn_world_with(world(size, cores, cooperative), move |universe| {
            let world = universe.world();
            let (rank, n) = (world.rank() as u64, world.size() as u64);
            for i in 0..3000u64 {
                if i % 97 == rank {
                    std::thread::yield_now();
                }
                let root = (i % n) as i32;
                let mut b = [0u64; 3];
                if rank == root as u64 {
                    b = [i, i * 3, i ^ 0x55];
                }
                world.process_at_rank(root).broadcast_into(&mut b[..]);
                assert_eq!(b, [i, i * 3, i ^ 0x55], "broadcast {i}");
                let mut s = [0u64; 2];
                world.all_reduce_into(&[i + rank, 1][..], &mut s[..], SystemOperation::sum());
                assert_eq!(s, [n * i + n * (n - 1) / 2, n], "all-reduce {i}");
                // Gather of 4-byte blocks, then scatter them back from another root.
                let mine = [(i * 16 + rank) as u32];
                let other = ((i + 1) % n) as i32;
                let mut all = vec![0u32; n as usize];
                if rank == other as u64 {
                    world.process_at_rank(other).gather_into_root(&mine[..], &mut all[..]);
                    assert_eq!(all, (0..n).map(|r| (i * 16 + r) as u32).collect::<Vec<_>>(), "gather {i}");
                    all.iter_mut().for_each(|v| *v += 1);
                    let mut back = [0u32];
                    world.process_at_rank(other).scatter_into_root(&all[..], &mut back[..]);
                    assert_eq!(back, [mine[0] + 1], "scatter {i}");
                } else {
                    world.process_at_rank(other).gather_into(&mine[..]);
                    let mut back = [0u32];
                    world.process_at_rank(other).scatter_into(&mut back[..]);
                    assert_eq!(back, [mine[0] + 1], "scatter {i}");
                }
            }
        });
    }
}

/// Split hands the colours one context id; each colour must still get its own arena.
#[test]
fn split_communicators_do_not_share_lines() {
    spawn_world_with(world(6, 0, false), |universe| {
        let world = universe.world();
        let rank = world.rank();
        let half = world.split_by_color(mpi::topology::Color::with_value(rank % 2)).expect("member");
        for i in 0..500i64 {
            let mut sum = [0i64];
            half.all_reduce_into(&[rank as i64 * 1000 + i][..], &mut sum[..], SystemOperation::sum());
            let members: i64 = (0..6).filter(|r| r % 2 == rank % 2).map(|r| r as i64 * 1000 + i).sum();
            assert_eq!(sum[0], members, "colour {} round {i}", rank % 2);
        }
    });
}

/// A non-commutative operation folds in rank order, and every rank gets the
/// bit-identical all-reduce result. (The in-memory suite, which has no shared memory,
/// checks the message path against the same references; `tuning::force_messages` is
/// process-wide, so tests running in parallel must not toggle it.)
#[test]
fn rank_order_and_identical_results() {
    for size in 2..=5 {
        let results = spawn_world_with(world(size, 0, false), |universe| {
            let world = universe.world();
            let rank = world.rank();
            // Products of 2x2 integer matrices: associative, not commutative.
            let matmul = mpi::collective::UserOperation::associative(|x, y| {
                let x: &[i64] = x.downcast().expect("i64");
                let y: &mut [i64] = y.downcast().expect("i64");
                for (x, y) in x.chunks_exact(4).zip(y.chunks_exact_mut(4)) {
                    let r = [x[0] * y[0] + x[1] * y[2], x[0] * y[1] + x[1] * y[3], x[2] * y[0] + x[3] * y[2], x[2] * y[1] + x[3] * y[3]];
                    y.copy_from_slice(&r);
                }
            });
            let mine = [1 + rank as i64, 2, 0, 1];
            let mut product = [0i64; 4];
            world.all_reduce_into(&mine[..], &mut product[..], &matmul);
            // 32 matrices (1 KiB): through the rank's overflow area.
            let many: Vec<i64> = mine.iter().copied().cycle().take(128).collect();
            let mut products = vec![0i64; 128];
            world.all_reduce_into(&many[..], &mut products[..], &matmul);
            assert!(products.chunks_exact(4).all(|p| p == product), "1 KiB product differs from the 32 B one");
            let mut float = [0f64];
            world.all_reduce_into(&[0.1f64 * (rank as f64 + 1.0).powi(7)][..], &mut float[..], SystemOperation::sum());
            (product, float[0].to_bits())
        });
        let mut expected = [1i64, 0, 0, 1];
        for rank in 0..size {
            let m = [1 + rank as i64, 2, 0, 1];
            let e = expected;
            expected = [e[0] * m[0] + e[1] * m[2], e[0] * m[1] + e[1] * m[3], e[2] * m[0] + e[3] * m[2], e[2] * m[1] + e[3] * m[3]];
        }
        assert!(results.iter().all(|r| r.0 == expected), "{size} ranks: {results:?}");
        assert!(results.iter().all(|r| r.1 == results[0].1), "{size} ranks: all-reduce results differ between ranks");
    }
}

/// Counts that differ (both small) are a count error on the ranks that see them.
#[test]
fn differing_small_counts_are_a_count_error() {
    let errors = spawn_world_with(world(3, 0, false), |universe| {
        let world = universe.world();
        let rank = world.rank();
        let input = vec![1u32; if rank == 1 { 3 } else { 2 }];
        let mut output = vec![0u32; input.len()];
        catch_error(&world, || world.all_reduce_into(&input[..], &mut output[..], SystemOperation::sum())).err().map(|e| e.class)
    });
    assert!(errors.iter().all(|e| *e == Some(ErrorClass::Count)), "{errors:?}");
}

/// Counts on both sides of `SHM_BYTES` (rank 1 above it, the others below) take
/// different paths, yet are a count error, not a hang; the communicator stays usable
/// for the next small collective.
#[test]
fn counts_straddling_the_shared_memory_limit_are_a_count_error() {
    use mpi::collective::shm::SHM_BYTES;
    let large = SHM_BYTES / 4 + 4;
    let results = spawn_world_with(world(3, 0, false), move |universe| {
        let world = universe.world();
        let rank = world.rank();
        let count = if rank == 1 { large } else { 2 };
        let input = vec![1u32; count];
        let mut output = vec![0u32; count];
        let mut errors = Vec::new();
        errors.push(catch_error(&world, || world.all_reduce_into(&input[..], &mut output[..], SystemOperation::sum())));
        for root in [0, 1] {
            let mut buffer = input.clone();
            errors.push(catch_error(&world, || world.process_at_rank(root).broadcast_into(&mut buffer[..])));
        }
        let mut gathered = vec![0u32; count * 3];
        errors.push(catch_error(&world, || {
            if rank == 0 {
                world.process_at_rank(0).gather_into_root(&input[..], &mut gathered[..])
            } else {
                world.process_at_rank(0).gather_into(&input[..])
            }
        }));
        let mut sum = 0u64;
        world.all_reduce_into(&(rank as u64), &mut sum, SystemOperation::sum());
        (errors.into_iter().map(|e| e.err().map(|e| e.class)).collect::<Vec<_>>(), sum)
    });
    let count = Some(ErrorClass::Count);
    // Per collective, the ranks that see the error: those that compare their count with
    // rank 1's (all-reduce: everyone with everyone; broadcast: everyone with the root;
    // gather: the root with everyone).
    let expected = [
        vec![count, count, count], // all-reduce
        vec![None, count, None],   // broadcast from small rank 0
        vec![count, None, count],  // broadcast from large rank 1
        vec![count, None, None],   // gather to rank 0
    ];
    for (rank, (errors, sum)) in results.iter().enumerate() {
        let mine: Vec<_> = expected.iter().map(|row| row[rank]).collect();
        assert_eq!(errors, &mine, "rank {rank}");
        assert_eq!(*sum, 3, "rank {rank}: the communicator broke after the errors");
    }
}
