//! Every collective against a sequential reference: ranks 1–16, sampled sizes from
//! 0 B to 1 MiB, every root, every operation, many types. Each rank regenerates every
//! rank's input from (seed, rank), so it computes the reference locally.

use crate as mpi;
use core::fmt::Debug;
use mpi::collective::{SystemOperation, UserOperation};
use mpi::datatype::{Equivalence, MinMaxLoc, Partition, PartitionMut};
use super::harness::{spawn_world_with, WorldOptions};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use std::vec;
use std::vec::Vec;

fn hash(seed: u64, rank: usize, index: usize) -> u64 {
    let mut x = seed ^ ((rank as u64) << 32) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

type Reference<T> = fn(T, T) -> T;

/// A type under test: how to make values and which operations apply (with reference).
trait TestValue: Equivalence + PartialEq + Debug + Default + Send {
    fn make(bits: u64) -> Self;
    fn operations() -> Vec<(SystemOperation, Reference<Self>)>;
}

macro_rules! integer_test_value {
    ($($t:ty),*) => {$(
        impl TestValue for $t {
            fn make(bits: u64) -> Self { bits as $t }
            fn operations() -> Vec<(SystemOperation, Reference<Self>)> {
                vec![
                    (SystemOperation::sum(), |a, b| a.wrapping_add(b)),
                    (SystemOperation::product(), |a, b| a.wrapping_mul(b)),
                    (SystemOperation::max(), |a, b| a.max(b)),
                    (SystemOperation::min(), |a, b| a.min(b)),
                    (SystemOperation::logical_and(), |a, b| ((a != 0) && (b != 0)) as $t),
                    (SystemOperation::logical_or(), |a, b| ((a != 0) || (b != 0)) as $t),
                    (SystemOperation::logical_xor(), |a, b| ((a != 0) != (b != 0)) as $t),
                    (SystemOperation::bitwise_and(), |a, b| a & b),
                    (SystemOperation::bitwise_or(), |a, b| a | b),
                    (SystemOperation::bitwise_xor(), |a, b| a ^ b),
                ]
            }
        }
    )*};
}
integer_test_value!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);

macro_rules! float_test_value {
    ($($t:ty),*) => {$(
        impl TestValue for $t {
            // Small integers (and zeros): exact in any summation order.
            fn make(bits: u64) -> Self { (bits % 5) as $t - 1.0 }
            fn operations() -> Vec<(SystemOperation, Reference<Self>)> {
                vec![
                    (SystemOperation::sum(), |a, b| a + b),
                    (SystemOperation::product(), |a, b| a * b),
                    (SystemOperation::max(), |a, b| if a > b { a } else { b }),
                    (SystemOperation::min(), |a, b| if a < b { a } else { b }),
                ]
            }
        }
    )*};
}
float_test_value!(f32, f64);

impl TestValue for bool {
    fn make(bits: u64) -> Self {
        bits % 3 != 0
    }
    fn operations() -> Vec<(SystemOperation, Reference<Self>)> {
        vec![
            (SystemOperation::logical_and(), |a, b| a && b),
            (SystemOperation::logical_or(), |a, b| a || b),
            (SystemOperation::logical_xor(), |a, b| a != b),
            (SystemOperation::bitwise_and(), |a, b| a && b),
            (SystemOperation::bitwise_or(), |a, b| a || b),
            (SystemOperation::bitwise_xor(), |a, b| a != b),
        ]
    }
}

impl TestValue for MinMaxLoc<f64, i64> {
    fn make(bits: u64) -> Self {
        MinMaxLoc::new((bits % 4) as f64, ((bits >> 8) % 16) as i64)
    }
    fn operations() -> Vec<(SystemOperation, Reference<Self>)> {
        fn pick(a: MinMaxLoc<f64, i64>, b: MinMaxLoc<f64, i64>, a_better: bool) -> MinMaxLoc<f64, i64> {
            if a.value == b.value {
                MinMaxLoc::new(a.value, a.location.min(b.location))
            } else if a_better {
                a
            } else {
                b
            }
        }
        vec![
            (SystemOperation::min_loc(), |a, b| pick(a, b, a.value < b.value)),
            (SystemOperation::max_loc(), |a, b| pick(a, b, a.value > b.value)),
        ]
    }
}

impl TestValue for MinMaxLoc<i32, i32> {
    fn make(bits: u64) -> Self {
        MinMaxLoc::new((bits % 3) as i32 - 1, ((bits >> 8) % 16) as i32)
    }
    fn operations() -> Vec<(SystemOperation, Reference<Self>)> {
        vec![
            (SystemOperation::min_loc(), |a, b| if a.value != b.value { if a.value < b.value { a } else { b } } else { MinMaxLoc::new(a.value, a.location.min(b.location)) }),
            (SystemOperation::max_loc(), |a, b| if a.value != b.value { if a.value > b.value { a } else { b } } else { MinMaxLoc::new(a.value, a.location.min(b.location)) }),
        ]
    }
}

fn data<T: TestValue>(seed: u64, rank: usize, count: usize) -> Vec<T> {
    (0..count).map(|i| T::make(hash(seed, rank, i))).collect()
}

/// Element-wise reduction of ranks `ranks` in rank order.
fn fold<T: TestValue>(seed: u64, ranks: core::ops::Range<usize>, count: usize, op: Reference<T>) -> Vec<T> {
    let mut ranks = ranks.into_iter();
    let first = ranks.next().expect("at least one rank");
    let mut result = data::<T>(seed, first, count);
    for rank in ranks {
        for (acc, value) in result.iter_mut().zip(data::<T>(seed, rank, count)) {
            *acc = op(*acc, value);
        }
    }
    result
}

/// Every reduction collective, every operation, every root (for short vectors).
fn check_reductions<T: TestValue>(world: &SimpleCommunicator, seed: u64, count: usize, all_roots: bool) {
    let (rank, n) = (world.rank() as usize, world.size() as usize);
    let mine = data::<T>(seed, rank, count);
    for (index, (op, reference)) in T::operations().into_iter().enumerate() {
        let label = || std::format!("{} op #{index} n={n} count={count}", core::any::type_name::<T>());
        if std::env::var("MPI_DEBUG").is_ok() { std::eprintln!("rank {rank}: {}", label()); }
        let mut out = vec![T::default(); count];
        world.all_reduce_into(&mine[..], &mut out[..], op);
        assert_eq!(out, fold(seed, 0..n, count, reference), "all_reduce {}", label());

        let roots: Vec<usize> = if all_roots { (0..n).collect() } else { vec![n / 2] };
        for &root in &roots {
            let root_process = world.process_at_rank(root as i32);
            if rank == root {
                let mut out = vec![T::default(); count];
                root_process.reduce_into_root(&mine[..], &mut out[..], op);
                assert_eq!(out, fold(seed, 0..n, count, reference), "reduce root {root} {}", label());
            } else {
                root_process.reduce_into(&mine[..], op);
            }
        }

        let mut out = vec![T::default(); count];
        world.scan_into(&mine[..], &mut out[..], op);
        assert_eq!(out, fold(seed, 0..rank + 1, count, reference), "scan {}", label());
        let mut out = vec![T::default(); count];
        world.exclusive_scan_into(&mine[..], &mut out[..], op);
        if rank > 0 {
            assert_eq!(out, fold(seed, 0..rank, count, reference), "exclusive scan {}", label());
        }

        let block = count / n.max(1);
        let send = &mine[..block * n];
        let mut out = vec![T::default(); block];
        world.reduce_scatter_block_into(send, &mut out[..], op);
        let full = fold(seed, 0..n, count, reference);
        assert_eq!(&out[..], &full[rank * block..(rank + 1) * block], "reduce_scatter_block {}", label());
    }
}

/// Every data-movement collective, every root.
fn check_movement<T: TestValue>(world: &SimpleCommunicator, seed: u64, count: usize, all_roots: bool) {
    let (rank, n) = (world.rank() as usize, world.size() as usize);
    let mine = data::<T>(seed, rank, count);
    let everyone: Vec<T> = (0..n).flat_map(|r| data::<T>(seed, r, count)).collect();
    // Rank r contributes (r + count) % 4 values to the varcount collectives.
    let varcounts: Vec<Count> = (0..n).map(|r| ((r + count) % 4) as Count).collect();
    let displs: Vec<Count> = varcounts.iter().scan(0, |acc, &c| { let d = *acc; *acc += c + 1; Some(d) }).collect();
    let var_len = (displs[n - 1] + varcounts[n - 1]) as usize;
    let var_mine = &mine_or_data::<T>(seed, rank, varcounts[rank] as usize)[..];
    let var_expected = |buffer: &[T]| {
        for r in 0..n {
            let part = &buffer[displs[r] as usize..(displs[r] + varcounts[r]) as usize];
            assert_eq!(part, &data::<T>(seed, r, varcounts[r] as usize)[..], "varcount part of rank {r}");
        }
    };

    let roots: Vec<usize> = if all_roots { (0..n).collect() } else { vec![(n - 1) / 2] };
    for &root in &roots {
        let root_process = world.process_at_rank(root as i32);
        let mut buffer = if rank == root { data::<T>(seed, root, count) } else { vec![T::default(); count] };
        root_process.broadcast_into(&mut buffer[..]);
        assert_eq!(buffer, data::<T>(seed, root, count), "broadcast root {root}");

        if rank == root {
            let mut all = vec![T::default(); count * n];
            root_process.gather_into_root(&mine[..], &mut all[..]);
            assert_eq!(all, everyone, "gather root {root}");
            let mut part = vec![T::default(); count];
            root_process.scatter_into_root(&everyone[..], &mut part[..]);
            assert_eq!(part, mine, "scatter root {root}");

            let mut var = vec![T::default(); var_len];
            root_process.gather_varcount_into_root(var_mine, &mut PartitionMut::new(&mut var[..], &varcounts[..], &displs[..]));
            var_expected(&var);
            let mut part = vec![T::default(); varcounts[rank] as usize];
            root_process.scatter_varcount_into_root(&Partition::new(&var[..], &varcounts[..], &displs[..]), &mut part[..]);
            assert_eq!(&part[..], var_mine);
        } else {
            root_process.gather_into(&mine[..]);
            let mut part = vec![T::default(); count];
            root_process.scatter_into(&mut part[..]);
            assert_eq!(part, mine, "scatter root {root}");
            root_process.gather_varcount_into(var_mine);
            let mut part = vec![T::default(); varcounts[rank] as usize];
            root_process.scatter_varcount_into(&mut part[..]);
            assert_eq!(&part[..], var_mine);
        }
    }

    let mut all = vec![T::default(); count * n];
    world.all_gather_into(&mine[..], &mut all[..]);
    assert_eq!(all, everyone, "all_gather n={n} count={count}");

    let mut var = vec![T::default(); var_len];
    world.all_gather_varcount_into(var_mine, &mut PartitionMut::new(&mut var[..], &varcounts[..], &displs[..]));
    var_expected(&var);

    // all-to-all: block j of rank i's input goes to rank j; values depend on (i, j).
    let block = count.div_ceil(n).max(1).min(count);
    let input: Vec<T> = (0..n).flat_map(|to| data::<T>(seed ^ to as u64, rank, block)).collect();
    let mut output = vec![T::default(); block * n];
    world.all_to_all_into(&input[..], &mut output[..]);
    let expected: Vec<T> = (0..n).flat_map(|from| data::<T>(seed ^ rank as u64, from, block)).collect();
    assert_eq!(output, expected, "all_to_all n={n} count={count}");

    // all-to-all varcount: rank i sends (i + j) % 3 values to rank j.
    let send_counts: Vec<Count> = (0..n).map(|to| ((rank + to) % 3) as Count).collect();
    let send_displs: Vec<Count> = (0..n).map(|to| (3 * to) as Count).collect();
    let input: Vec<T> = (0..n).flat_map(|to| data::<T>(seed ^ (to as u64) << 8, rank, 3)).collect();
    let receive_counts: Vec<Count> = (0..n).map(|from| ((rank + from) % 3) as Count).collect();
    let receive_displs: Vec<Count> = (0..n).map(|from| (3 * from) as Count).collect();
    let mut output = vec![T::default(); 3 * n];
    world.all_to_all_varcount_into(
        &Partition::new(&input[..], &send_counts[..], &send_displs[..]),
        &mut PartitionMut::new(&mut output[..], &receive_counts[..], &receive_displs[..]),
    );
    for from in 0..n {
        let k = receive_counts[from] as usize;
        assert_eq!(&output[3 * from..3 * from + k], &data::<T>(seed ^ (rank as u64) << 8, from, 3)[..k], "alltoallv from {from}");
    }
}

fn mine_or_data<T: TestValue>(seed: u64, rank: usize, count: usize) -> Vec<T> {
    data::<T>(seed, rank, count)
}

fn options(size: usize, eager_limit: usize) -> WorldOptions {
    let mut options = WorldOptions::new(size);
    options.eager_limit = eager_limit;
    options.timeout = std::time::Duration::from_secs(if std::env::var("MPI_DEBUG").is_ok() { 10 } else { 90 });
    options
}

#[test]
fn reductions_of_every_type_and_operation_on_1_to_16_ranks() {
    for n in std::env::var("MPI_N").ok().map(|v| v.parse().unwrap()..=v.parse().unwrap()).unwrap_or(1..=16usize) {
        // Small eager limit on odd rank counts: exercises rendezvous-style completion.
        let eager = if n % 2 == 1 { 64 } else { usize::MAX };
        spawn_world_with(options(n, eager), move |universe| {
            let world = universe.world();
            let all_roots = n <= 6 || n == 16;
            let seed = 17 + n as u64;
            for &count in &[0usize, 1, 5, 33] {
                check_reductions::<i32>(&world, seed, count, all_roots);
            }
            check_reductions::<i8>(&world, seed, 9, false);
            check_reductions::<i16>(&world, seed, 9, false);
            check_reductions::<i64>(&world, seed, 9, false);
            check_reductions::<i128>(&world, seed, 3, false);
            check_reductions::<isize>(&world, seed, 3, false);
            check_reductions::<u8>(&world, seed, 17, all_roots);
            check_reductions::<u16>(&world, seed, 3, false);
            check_reductions::<u32>(&world, seed, 3, false);
            check_reductions::<u64>(&world, seed, 3, false);
            check_reductions::<u128>(&world, seed, 3, false);
            check_reductions::<usize>(&world, seed, 3, false);
            check_reductions::<f32>(&world, seed, 7, false);
            check_reductions::<f64>(&world, seed, 7, all_roots);
            check_reductions::<bool>(&world, seed, 10, false);
            check_reductions::<MinMaxLoc<f64, i64>>(&world, seed, 6, all_roots);
            check_reductions::<MinMaxLoc<i32, i32>>(&world, seed, 6, false);
        });
    }
}

#[test]
fn data_movement_on_1_to_16_ranks() {
    for n in 1..=16usize {
        let eager = if n % 3 == 0 { 0 } else { usize::MAX };
        spawn_world_with(options(n, eager), move |universe| {
            let world = universe.world();
            let seed = 99 + n as u64;
            for &count in &[0usize, 1, 6] {
                check_movement::<u8>(&world, seed, count, true);
            }
            check_movement::<f64>(&world, seed, 5, n <= 4);
            check_movement::<bool>(&world, seed, 4, false);
            check_movement::<[i32; 3]>(&world, seed, 3, false);
            world.barrier();
        });
    }
}

/// Gather and scatter send from and receive into the caller's buffers where the blocks
/// lie in one piece, and stage them where a subtree wraps past the last rank: every
/// root of every size up to 9, blocks larger than a small message (and, on a third of
/// the sizes, every message by rendezvous).
#[test]
fn gather_and_scatter_of_large_blocks_from_every_root() {
    for n in 2..=9usize {
        let eager = if n % 3 == 0 { 0 } else { usize::MAX };
        spawn_world_with(options(n, eager), move |universe| {
            let world = universe.world();
            let (rank, count) = (world.rank() as usize, 3001);
            let seed = 7 + n as u64;
            let mine = data::<u8>(seed, rank, count);
            let everyone: Vec<u8> = (0..n).flat_map(|r| data::<u8>(seed, r, count)).collect();
            for root in 0..n {
                let root_process = world.process_at_rank(root as i32);
                let mut part = vec![0u8; count];
                if rank == root {
                    let mut all = vec![0u8; count * n];
                    root_process.gather_into_root(&mine[..], &mut all[..]);
                    assert_eq!(all, everyone, "gather of {n} from root {root}");
                    root_process.scatter_into_root(&everyone[..], &mut part[..]);
                } else {
                    root_process.gather_into(&mine[..]);
                    root_process.scatter_into(&mut part[..]);
                }
                assert_eq!(part, mine, "scatter of {n} from root {root}, rank {rank}");
            }
        });
    }
}

impl TestValue for [i32; 3] {
    fn make(bits: u64) -> Self {
        [bits as i32, (bits >> 20) as i32, (bits >> 40) as i32]
    }
    fn operations() -> Vec<(SystemOperation, Reference<Self>)> {
        vec![(SystemOperation::sum(), |a, b| [a[0].wrapping_add(b[0]), a[1].wrapping_add(b[1]), a[2].wrapping_add(b[2])])]
    }
}

#[test]
fn large_vectors_up_to_1_mib() {
    // Sizes past the ring threshold and up to 1 MiB, on a few rank counts.
    // (5, 40_000): Rabenseifner; (3, 1 << 18): the ring; (8, 9_000): Rabenseifner and
    // scatter + all-gather broadcast.
    for &(n, count) in &[(2usize, 1usize << 18), (3, 1 << 18), (5, 40_000), (8, 9_000), (16, 1 << 16)] {
        spawn_world_with(options(n, 16 * 1024), move |universe| {
            let world = universe.world();
            let seed = 5 + n as u64;
            let rank = world.rank() as usize;
            let mine = data::<i32>(seed, rank, count);
            let mut out = vec![0i32; count];
            world.all_reduce_into(&mine[..], &mut out[..], SystemOperation::sum());
            assert_eq!(out, fold(seed, 0..n, count, |a: i32, b| a.wrapping_add(b)));
            let mut out = vec![0i32; count];
            world.all_reduce_into(&mine[..], &mut out[..], SystemOperation::max());
            assert_eq!(out, fold(seed, 0..n, count, |a: i32, b| a.max(b)));
            let mut buffer = if rank == 1 % n { mine.clone() } else { vec![0; count] };
            world.process_at_rank((1 % n) as i32).broadcast_into(&mut buffer[..]);
            assert_eq!(buffer, data::<i32>(seed, 1 % n, count));
            let block = count / n / 4;
            let mut all = vec![0i32; block * n];
            world.all_gather_into(&mine[..block], &mut all[..]);
            assert!((0..n).all(|r| all[r * block..(r + 1) * block] == data::<i32>(seed, r, block)[..]));
            let mut out = vec![0i32; block * n];
            world.all_to_all_into(&mine[..block * n], &mut out[..]);
            assert!((0..n).all(|r| out[r * block..(r + 1) * block] == data::<i32>(seed, r, block * n)[rank * block..(rank + 1) * block]));
        });
    }
}

#[test]
fn all_reduce_is_bit_identical_on_every_rank() {
    for &n in &[3usize, 6, 13] {
        for &count in &[3usize, 12_000] {
            let results = spawn_world_with(options(n, usize::MAX), move |universe| {
                let world = universe.world();
                // Non-integer values: rounding depends on the order of additions.
                let mine: Vec<f64> = (0..count).map(|i| (hash(3, world.rank() as usize, i) % 1_000_003) as f64 / 7.3).collect();
                let mut out = vec![0f64; count];
                world.all_reduce_into(&mine[..], &mut out[..], SystemOperation::sum());
                out.iter().map(|v| v.to_bits()).collect::<Vec<u64>>()
            });
            assert!(results.windows(2).all(|w| w[0] == w[1]), "n={n} count={count}");
        }
    }
}

#[test]
fn user_operations_commutative_and_ordered() {
    for n in [1usize, 4, 7] {
        spawn_world_with(options(n, usize::MAX), move |universe| {
            let world = universe.world();
            let rank = world.rank();
            let sum = UserOperation::commutative(|input, inout| {
                let input: &[i32] = input.downcast().expect("i32 input");
                let inout: &mut [i32] = inout.downcast().expect("i32 inout");
                for (x, y) in input.iter().zip(inout) {
                    *y += x;
                }
            });
            let mut total = 0;
            world.all_reduce_into(&(rank + 1), &mut total, &sum);
            assert_eq!(total, (n * (n + 1) / 2) as i32);
            non_commutative_reductions(&world);
        });
    }
}

/// Composition of affine maps x ↦ a·x + b (associative, not commutative) through
/// all-reduce (short and long vectors), scan and reduce: results must be in rank order.
fn non_commutative_reductions(world: &SimpleCommunicator) {
    let (rank, n) = (world.rank(), world.size() as usize);
    // `inout = input ∘ inout`: the reference composes in rank order the same way.
    let compose = |first: [i64; 2], second: [i64; 2]| [first[0].wrapping_mul(second[0]), first[0].wrapping_mul(second[1]).wrapping_add(first[1])];
    let affine = UserOperation::associative(move |input, inout| {
        let input: &[[i64; 2]] = input.downcast().expect("pairs");
        let inout: &mut [[i64; 2]] = inout.downcast().expect("pairs");
        for (x, y) in input.iter().zip(inout) {
            *y = compose(*x, *y);
        }
    });
    let value = |r: i64, i: usize| [r + 2 + (i % 3) as i64, r * 3 + 1 + i as i64];
    let reference = |ranks: core::ops::Range<i64>, i: usize| ranks.clone().skip(1).fold(value(ranks.start, i), |acc, r| compose(acc, value(r, i)));
    // 4 values: recursive doubling; 400 (6.4 KB): Rabenseifner.
    for count in [4usize, 400] {
        let mine: Vec<[i64; 2]> = (0..count).map(|i| value(rank as i64, i)).collect();
        let expected: Vec<[i64; 2]> = (0..count).map(|i| reference(0..n as i64, i)).collect();
        let mut out = vec![[0i64; 2]; count];
        world.all_reduce_into(&mine[..], &mut out[..], &affine);
        assert_eq!(out, expected, "non-commutative all-reduce of {count}");
        let mut prefix = vec![[0i64; 2]; count];
        world.scan_into(&mine[..], &mut prefix[..], &affine);
        let expected_prefix: Vec<[i64; 2]> = (0..count).map(|i| reference(0..rank as i64 + 1, i)).collect();
        assert_eq!(prefix, expected_prefix, "non-commutative scan of {count}");
        let root = world.process_at_rank((n / 2) as i32);
        if rank as usize == n / 2 {
            let mut out = vec![[0i64; 2]; count];
            root.reduce_into_root(&mine[..], &mut out[..], &affine);
            assert_eq!(out, expected, "non-commutative reduce of {count}");
        } else {
            root.reduce_into(&mine[..], &affine);
        }
    }
}

// ---- each algorithm forced, and hierarchical collectives ----

use mpi::collective::internal::{self, Group};
use mpi::collective::selection;
use mpi::testing::Placement;

/// Digest of bytes (exact: any difference in any bit changes it, with overwhelming odds).
fn digest(bytes: &[u8]) -> u64 {
    bytes.chunks(8).enumerate().fold(bytes.len() as u64, |acc, (i, chunk)| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash(acc, i, u64::from_ne_bytes(word) as usize)
    })
}

type AllReduceAlgorithm = fn(&Group, &[u8], &mut [u8], &dyn mpi::collective::Operation) -> mpi::error::MpiResult<()>;
type BroadcastAlgorithm = fn(&Group, usize, &mut [u8]) -> mpi::error::MpiResult<()>;

const ALL_REDUCE_ALGORITHMS: [(&str, AllReduceAlgorithm); 3] = [
    ("recursive doubling", internal::all_reduce_recursive_doubling),
    ("rabenseifner", internal::all_reduce_rabenseifner),
    ("ring", internal::all_reduce_ring),
];
const BROADCAST_ALGORITHMS: [(&str, BroadcastAlgorithm); 2] =
    [("binomial", internal::broadcast_binomial), ("scatter + all-gather", internal::broadcast_scatter_all_gather)];

/// One trial: every all-reduce algorithm on operation `op_index` of `T`, every
/// broadcast algorithm from `root`; each rank returns the digests of its results, the
/// test thread compares them with the sequential reference (computed once).
fn run_algorithms<T: TestValue>(n: usize, count: usize, root: usize, op_index: usize, seed: u64, eager: usize, vms: usize) {
    let mut world_options = options(n, eager);
    world_options.vms = vms;
    let label = std::format!("{} n={n} count={count} root={root} op #{op_index} vms={vms}", core::any::type_name::<T>());
    let results = spawn_world_with(world_options, move |universe| {
        let world = universe.world();
        let rank = world.rank() as usize;
        let mine = data::<T>(seed, rank, count);
        let (op, _) = T::operations().swap_remove(op_index);
        let group = Group::new(&world.state, T::equivalent_datatype());
        let mut digests = Vec::new();
        for (_, algorithm) in ALL_REDUCE_ALGORITHMS {
            let mut out = vec![T::default(); count];
            algorithm(&group, mpi::raw::bytes_of(&mine), mpi::raw::bytes_of_mut(&mut out), &op).expect("all-reduce");
            digests.push(digest(mpi::raw::bytes_of(&out)));
        }
        for (_, algorithm) in BROADCAST_ALGORITHMS {
            let mut buffer = if rank == root { data::<T>(seed, root, count) } else { vec![T::default(); count] };
            algorithm(&group, root, mpi::raw::bytes_of_mut(&mut buffer)).expect("broadcast");
            digests.push(digest(mpi::raw::bytes_of(&buffer)));
        }
        digests
    });
    let (_, reference) = T::operations().swap_remove(op_index);
    let reduced = digest(mpi::raw::bytes_of(&fold(seed, 0..n, count, reference)));
    let broadcast = digest(mpi::raw::bytes_of(&data::<T>(seed, root, count)));
    for (rank, digests) in results.iter().enumerate() {
        for (index, (name, _)) in ALL_REDUCE_ALGORITHMS.iter().enumerate() {
            assert_eq!(digests[index], reduced, "all-reduce {name} on rank {rank}: {label}");
        }
        for (index, (name, _)) in BROADCAST_ALGORITHMS.iter().enumerate() {
            assert_eq!(digests[ALL_REDUCE_ALGORITHMS.len() + index], broadcast, "broadcast {name} on rank {rank}: {label}");
        }
    }
}

#[test]
fn every_all_reduce_and_broadcast_algorithm_randomized_up_to_1_mib() {
    let trials: u64 = std::env::var("MPI_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    for trial in 0..trials {
        let h = |i: usize| hash(0xA160, trial as usize, i);
        let n = 1 + (h(1) % 16) as usize;
        // Log-uniform sizes from 0 B to 1 MiB (every fourth trial 16 KiB – 1 MiB).
        let bits = if trial % 4 == 3 { 14 + h(2) % 7 } else { h(2) % 21 };
        let bytes = (h(3) % ((1u64 << bits) + 1)) as usize;
        let root = (h(4) % n as u64) as usize;
        let eager = if trial % 2 == 0 { usize::MAX } else { 4096 };
        let seed = h(5);
        let op = h(6) as usize;
        match trial % 4 {
            0 => run_algorithms::<i32>(n, bytes / 4, root, op % i32::operations().len(), seed, eager, 1),
            1 => run_algorithms::<f64>(n, bytes / 8, root, op % f64::operations().len(), seed, eager, 1),
            2 => run_algorithms::<u8>(n, bytes, root, op % u8::operations().len(), seed, eager, 1),
            _ => run_algorithms::<MinMaxLoc<f64, i64>>(n, bytes / 16, root, op % 2, seed, eager, 1),
        }
    }
}

#[test]
fn algorithm_edge_cases() {
    // Fewer values than ranks, one value, powers of two and one past them.
    for &(n, count) in &[(1usize, 0usize), (1, 7), (2, 1), (3, 2), (4, 4), (5, 3), (7, 100), (8, 8), (9, 8), (15, 4096), (16, 3)] {
        run_algorithms::<i64>(n, count, n - 1, 0, 7 + n as u64, 64, 1);
        run_algorithms::<f32>(n, count, n / 2, 0, 9 + n as u64, usize::MAX, 1);
    }
}

#[test]
fn selection_thresholds() {
    use selection::{AllReduce, Broadcast};
    let short = selection::ALL_REDUCE_SHORT_MAX_BYTES;
    let few = selection::ALL_REDUCE_RECURSIVE_DOUBLING_MAX_RANKS;
    let ring = selection::ALL_REDUCE_RING_MIN_BYTES_PER_RANK;
    assert_eq!(selection::all_reduce(short, short / 4, 8, true), AllReduce::RecursiveDoubling);
    assert_eq!(selection::all_reduce(short + 4, short / 4 + 1, 8, true), AllReduce::Rabenseifner);
    assert_eq!(selection::all_reduce(1 << 21, 1 << 19, few, true), AllReduce::RecursiveDoubling);
    assert_eq!(selection::all_reduce(1 << 20, 1 << 18, few + 1, true), AllReduce::Rabenseifner);
    assert_eq!(selection::all_reduce(3 * ring, 3 * ring / 4, 3, true), AllReduce::Ring);
    assert_eq!(selection::all_reduce(3 * ring - 4, 3 * ring / 4 - 1, 3, true), AllReduce::RecursiveDoubling);
    assert_eq!(selection::all_reduce(6 * ring, 6 * ring / 4, 6, true), AllReduce::Ring);
    assert_eq!(selection::all_reduce(6 * ring, 6 * ring / 4, 6, false), AllReduce::Rabenseifner);
    assert_eq!(selection::all_reduce(8 * ring, 8 * ring / 4, 8, true), AllReduce::Rabenseifner);
    assert_eq!(selection::all_reduce(1 << 20, 3, 8, true), AllReduce::RecursiveDoubling);
    assert_eq!(selection::broadcast(1 << 20, 1 << 20, selection::BROADCAST_MIN_RANKS - 1), Broadcast::Binomial);
    assert_eq!(selection::broadcast(1 << 20, 1 << 20, selection::BROADCAST_MIN_RANKS), Broadcast::ScatterAllGather);
    assert_eq!(selection::broadcast(selection::BROADCAST_SHORT_MAX_BYTES - 1, 1 << 10, 16), Broadcast::Binomial);
}

#[test]
fn all_algorithms_give_bit_identical_results_on_every_rank() {
    // Non-integer values: rounding depends on the order of additions. Recursive doubling
    // and Rabenseifner use the same bracketing, so they agree with each other too.
    for &n in &[3usize, 6, 8, 13] {
        for &count in &[3usize, 12_000] {
            let results = spawn_world_with(options(n, 1024), move |universe| {
                let world = universe.world();
                let mine: Vec<f64> = (0..count).map(|i| (hash(3, world.rank() as usize, i) % 1_000_003) as f64 / 7.3).collect();
                let group = Group::new(&world.state, f64::equivalent_datatype());
                ALL_REDUCE_ALGORITHMS
                    .iter()
                    .map(|(_, algorithm)| {
                        let mut out = vec![0f64; count];
                        algorithm(&group, mpi::raw::bytes_of(&mine), mpi::raw::bytes_of_mut(&mut out), &SystemOperation::sum()).expect("all-reduce");
                        digest(mpi::raw::bytes_of(&out))
                    })
                    .collect::<Vec<u64>>()
            });
            assert!(results.windows(2).all(|w| w[0] == w[1]), "n={n} count={count}: ranks differ");
            assert_eq!(results[0][0], results[0][1], "n={n} count={count}: recursive doubling and Rabenseifner differ");
        }
    }
}

/// The public collectives (and so `topology::plan`'s hierarchical path) on ranks
/// spread over pretend VMs, in blocks and round-robin.
#[test]
fn hierarchical_collectives_across_vms() {
    for n in 2..=16usize {
        for (vms, placement) in [(2, Placement::Blocks), (3, Placement::Blocks), (2, Placement::RoundRobin), (5, Placement::RoundRobin)] {
            if vms > n {
                continue;
            }
            let mut world_options = options(n, if n % 2 == 0 { 64 } else { usize::MAX });
            world_options.vms = vms;
            world_options.placement = placement;
            spawn_world_with(world_options, move |universe| {
                let world = universe.world();
                let seed = 1000 + n as u64 * 7 + vms as u64;
                let all_roots = n <= 6;
                for &count in &[0usize, 1, 33] {
                    check_reductions::<i32>(&world, seed, count, all_roots);
                }
                check_reductions::<f64>(&world, seed, 7, false);
                check_reductions::<MinMaxLoc<i32, i32>>(&world, seed, 5, false);
                check_movement::<u8>(&world, seed, 6, all_roots);
                check_movement::<[i32; 3]>(&world, seed, 2, false);
                world.barrier();
                non_commutative_reductions(&world);
                // Large enough for Rabenseifner among the leaders and scatter + all-gather.
                let count = 5000;
                let mine = data::<i32>(seed, world.rank() as usize, count);
                let mut out = vec![0i32; count];
                world.all_reduce_into(&mine[..], &mut out[..], SystemOperation::sum());
                assert_eq!(out, fold(seed, 0..n, count, |a: i32, b| a.wrapping_add(b)), "large all-reduce");
                let root = n - 1;
                let mut buffer = if world.rank() as usize == root { mine.clone() } else { vec![0; count] };
                world.process_at_rank(root as i32).broadcast_into(&mut buffer[..]);
                assert_eq!(buffer, data::<i32>(seed, root, count), "large broadcast");
            });
        }
    }
}

#[test]
fn hierarchical_all_reduce_is_bit_identical_on_every_rank() {
    for &(n, vms) in &[(6usize, 2usize), (13, 3), (16, 4)] {
        let mut world_options = options(n, usize::MAX);
        world_options.vms = vms;
        let results = spawn_world_with(world_options, move |universe| {
            let world = universe.world();
            let mine: Vec<f64> = (0..4000).map(|i| (hash(5, world.rank() as usize, i) % 1_000_003) as f64 / 3.1).collect();
            let mut out = vec![0f64; mine.len()];
            world.all_reduce_into(&mine[..], &mut out[..], SystemOperation::sum());
            digest(mpi::raw::bytes_of(&out))
        });
        assert!(results.windows(2).all(|w| w[0] == w[1]), "n={n} vms={vms}");
    }
}
