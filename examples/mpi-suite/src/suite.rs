//! The MPI test suite as a VM app: point-to-point (every form, any source,
//! tags, probe, synchronous send, many outstanding immediate operations) and
//! every collective checked against sequential results computed locally, a
//! `#[derive(Equivalence)]` struct in messages and collectives; across VMs the
//! collectives take the hierarchical path (inside each VM, then among VM leaders).
//! Prints `suite: <check> ok` per check and `suite: all passed` on rank 0.
//! `-- truncate` / `-- bad-rank` / `-- other-vm` run an error case that must end the job.
//! `-- compute MS`: the last rank computes MS ms without MPI calls between two
//! collectives while rank 0 streams it 8 MiB (data in flight to a rank that does not
//! poll); prints `suite: compute MS ok` on rank 0.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use mpi::collective::{SystemOperation, UserOperation};
use mpi::datatype::{Partition, PartitionMut};
use mpi::request::{scope, wait_all, wait_any};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use toro::println;

toro::main!(main);

fn value(rank: usize, i: usize) -> u64 {
    let mut x = (rank as u64) << 32 ^ i as u64 ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 31;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 29)
}

fn data(rank: usize, n: usize) -> Vec<u64> {
    (0..n).map(|i| value(rank, i)).collect()
}

fn check(world: &SimpleCommunicator, name: &str) {
    world.barrier();
    if world.rank() == 0 {
        println!("suite: {name} ok");
    }
}

fn point_to_point(world: &SimpleCommunicator, small: bool) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let next = world.process_at_rank(((rank + 1) % size) as i32);
    let prev = world.process_at_rank(((rank + size - 1) % size) as i32);
    // Every send/receive form, around the ring, small and large (rendezvous).
    let sizes: &[usize] = if small { &[0, 1, 255, 256, 300, 5000] } else { &[0, 1, 255, 256, 300, 5000, 200_000] };
    for &n in sizes {
        let out = data(rank, n);
        let mut got = vec![0u64; n];
        scope(|s| {
            let r = prev.immediate_receive_into(s, &mut got[..]);
            next.send(&out[..]);
            r.wait();
        });
        assert_eq!(got, data((rank + size - 1) % size, n), "ring of {n}");
        // Synchronous: completes only once matched (a blocking ssend around the ring would deadlock).
        let (v, status) = scope(|s| {
            let r = next.immediate_synchronous_send_with_tag(s, &out[..], 7);
            let got = prev.receive_vec_with_tag::<u64>(7);
            r.wait();
            got
        });
        assert_eq!((v.len(), status.tag(), status.source_rank() as usize), (n, 7, (rank + size - 1) % size));
    }
    check(world, "send/receive forms (0 B .. 1.6 MB, standard and synchronous)");
    // Tags select out of order.
    next.send_with_tag(&1u32, 10);
    next.send_with_tag(&2u32, 20);
    assert_eq!(prev.receive_with_tag::<u32>(20).0, 2);
    assert_eq!(prev.receive_with_tag::<u32>(10).0, 1);
    check(world, "tags out of order");
    // Any source: rank 0 collects from everyone, per-sender order kept.
    if rank == 0 {
        let mut last = vec![0u64; size];
        for _ in 0..(size - 1) * 50 {
            let (v, status) = world.any_process().receive::<u64>();
            let from = status.source_rank() as usize;
            assert_eq!(v, last[from] + 1, "non-overtaking from {from}");
            last[from] = v;
        }
    } else {
        for i in 1..=50u64 {
            world.process_at_rank(0).send(&i);
        }
    }
    check(world, "any source, non-overtaking");
    // Probe, then receive exactly that message; matched probe.
    next.send_with_tag(&data(rank, 33)[..], 3);
    let status = prev.probe_with_tag(3);
    assert_eq!(status.count(u64::equivalent_datatype()), 33);
    let mut buf = vec![0u64; 33];
    prev.receive_into_with_tag(&mut buf[..], 3);
    assert_eq!(buf, data((rank + size - 1) % size, 33));
    next.send(&5i16);
    let (msg, _) = world.any_process().matched_probe();
    assert_eq!(msg.matched_receive::<i16>().0, 5);
    check(world, "probe and matched probe");
    // Many outstanding immediate operations, wait_any and test.
    let count = if small { 500 } else { 2000 };
    let outgoing: Vec<u32> = (0..count as u32).collect();
    let mut incoming = vec![0u32; count];
    scope(|s| {
        let mut receives: Vec<_> = incoming.chunks_mut(1).map(|c| prev.immediate_receive_into(s, c)).collect();
        let sends: Vec<_> = outgoing.chunks(1).map(|c| next.immediate_send(s, c)).collect();
        wait_all(sends);
        let mut done = 0;
        while let Some((_, _)) = wait_any(&mut receives) {
            done += 1;
        }
        assert_eq!(done, count);
    });
    assert_eq!(incoming, outgoing);
    scope(|s| {
        let mut r = Some(prev.immediate_receive_into(s, &mut buf[..1]));
        next.send(&[9u64][..]);
        while let Some(req) = r.take() {
            if let Err(again) = req.test() {
                r = Some(again);
            }
        }
    });
    assert_eq!(buf[0], 9);
    check(world, if small { "500 outstanding immediate sends/receives, wait_any, test" } else { "2000 outstanding immediate sends/receives, wait_any, test" });
}

fn collectives(world: &SimpleCommunicator, small: bool) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    for _ in 0..100 {
        world.barrier();
    }
    check(world, "barrier x100");
    let sizes: &[usize] = if small { &[1, 100, 3000] } else { &[1, 100, 70_000] };
    for &n in sizes {
        for root in 0..size {
            let mut b = if rank == root { data(root, n) } else { vec![0; n] };
            world.process_at_rank(root as i32).broadcast_into(&mut b[..]);
            assert_eq!(b, data(root, n));
        }
        // Reductions: sum (wrapping), max, min, bitwise xor against local references.
        let mine = data(rank, n);
        let all: Vec<Vec<u64>> = (0..size).map(|r| data(r, n)).collect();
        let fold = |f: fn(u64, u64) -> u64| -> Vec<u64> {
            (0..n).map(|i| all.iter().skip(1).fold(all[0][i], |acc, v| f(acc, v[i]))).collect()
        };
        let ops: [(SystemOperation, fn(u64, u64) -> u64); 4] = [
            (SystemOperation::sum(), |a, b| a.wrapping_add(b)),
            (SystemOperation::max(), |a, b| a.max(b)),
            (SystemOperation::min(), |a, b| a.min(b)),
            (SystemOperation::bitwise_xor(), |a, b| a ^ b),
        ];
        for (op, f) in ops {
            let want = fold(f);
            let mut got = vec![0u64; n];
            world.all_reduce_into(&mine[..], &mut got[..], op);
            assert_eq!(got, want, "allreduce n={n}");
            for root in 0..size {
                let p = world.process_at_rank(root as i32);
                if rank == root {
                    let mut r = vec![0u64; n];
                    p.reduce_into_root(&mine[..], &mut r[..], op);
                    assert_eq!(r, want, "reduce n={n} root={root}");
                } else {
                    p.reduce_into(&mine[..], op);
                }
            }
            // Inclusive and exclusive scans.
            let mut sc = vec![0u64; n];
            world.scan_into(&mine[..], &mut sc[..], op);
            let prefix: Vec<u64> = (0..n).map(|i| (1..=rank).fold(all[0][i], |acc, r| f(acc, all[r][i]))).collect();
            assert_eq!(sc, prefix, "scan n={n}");
            if rank > 0 {
                let mut ex = vec![0u64; n];
                world.exclusive_scan_into(&mine[..], &mut ex[..], op);
                let prefix: Vec<u64> = (0..n).map(|i| (1..rank).fold(all[0][i], |acc, r| f(acc, all[r][i]))).collect();
                assert_eq!(ex, prefix, "exscan n={n}");
            } else {
                let mut ex = vec![0u64; n];
                world.exclusive_scan_into(&mine[..], &mut ex[..], op);
            }
        }
        // reduce_scatter_block: every rank gets its block of the sum.
        let big = data(rank, n * size);
        let mut block = vec![0u64; n];
        world.reduce_scatter_block_into(&big[..], &mut block[..], SystemOperation::sum());
        let want: Vec<u64> = (0..n).map(|i| (0..size).fold(0u64, |a, r| a.wrapping_add(value(r, rank * n + i)))).collect();
        assert_eq!(block, want, "reduce_scatter_block n={n}");
        // Gather / scatter (fixed and varcount) at every root; allgather(v); alltoall(v).
        for root in 0..size {
            let p = world.process_at_rank(root as i32);
            if rank == root {
                let mut g = vec![0u64; n * size];
                p.gather_into_root(&mine[..], &mut g[..]);
                assert_eq!(g, all.concat(), "gather");
                let src = data(1000 + root, n * size);
                let mut s = vec![0u64; n];
                p.scatter_into_root(&src[..], &mut s[..]);
                assert_eq!(s, src[rank * n..(rank + 1) * n]);
            } else {
                p.gather_into(&mine[..]);
                let mut s = vec![0u64; n];
                p.scatter_into(&mut s[..]);
                assert_eq!(s, data(1000 + root, n * size)[rank * n..(rank + 1) * n]);
            }
            let counts: Vec<Count> = (0..size).map(|r| (r % 3 * n / 2) as Count).collect();
            let displs: Vec<Count> = counts.iter().scan(0, |acc, &c| { let d = *acc; *acc += c; Some(d) }).collect();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mine_v = &mine[..counts[rank] as usize];
            if rank == root {
                let mut g = vec![0u64; total];
                p.gather_varcount_into_root(mine_v, &mut PartitionMut::new(&mut g[..], &counts[..], &displs[..]));
                let want: Vec<u64> = (0..size).flat_map(|r| data(r, n)[..counts[r] as usize].to_vec()).collect();
                assert_eq!(g, want, "gatherv");
                let src = data(2000 + root, total);
                let mut s = vec![0u64; counts[rank] as usize];
                p.scatter_varcount_into_root(&Partition::new(&src[..], &counts[..], &displs[..]), &mut s[..]);
            } else {
                p.gather_varcount_into(mine_v);
                let mut s = vec![0u64; counts[rank] as usize];
                p.scatter_varcount_into(&mut s[..]);
                let src = data(2000 + root, total);
                assert_eq!(s, src[displs[rank] as usize..(displs[rank] + counts[rank]) as usize], "scatterv");
            }
        }
        let mut ag = vec![0u64; n * size];
        world.all_gather_into(&mine[..], &mut ag[..]);
        assert_eq!(ag, all.concat(), "allgather");
        let counts: Vec<Count> = (0..size).map(|r| ((r + 1) * n / size) as Count).collect();
        let displs: Vec<Count> = counts.iter().scan(0, |acc, &c| { let d = *acc; *acc += c; Some(d) }).collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut agv = vec![0u64; total];
        world.all_gather_varcount_into(&mine[..counts[rank] as usize], &mut PartitionMut::new(&mut agv[..], &counts[..], &displs[..]));
        let want: Vec<u64> = (0..size).flat_map(|r| data(r, n)[..counts[r] as usize].to_vec()).collect();
        assert_eq!(agv, want, "allgatherv");
        let out: Vec<u64> = (0..n * size).map(|i| value(rank * 7 + 3, i)).collect();
        let mut a2a = vec![0u64; n * size];
        world.all_to_all_into(&out[..], &mut a2a[..]);
        for from in 0..size {
            for i in 0..n {
                assert_eq!(a2a[from * n + i], value(from * 7 + 3, rank * n + i), "alltoall");
            }
        }
        // alltoallv: rank r sends (r + to) % 3 elements to `to`.
        let scounts: Vec<Count> = (0..size).map(|to| ((rank + to) % 3) as Count).collect();
        let sdispls: Vec<Count> = scounts.iter().scan(0, |acc, &c| { let d = *acc; *acc += c; Some(d) }).collect();
        let rcounts: Vec<Count> = (0..size).map(|from| ((from + rank) % 3) as Count).collect();
        let rdispls: Vec<Count> = rcounts.iter().scan(0, |acc, &c| { let d = *acc; *acc += c; Some(d) }).collect();
        let sendv: Vec<u64> = (0..size).flat_map(|to| (0..scounts[to] as usize).map(move |i| (rank * 100 + to * 10 + i) as u64)).collect();
        let mut recvv = vec![0u64; rcounts.iter().sum::<Count>() as usize];
        world.all_to_all_varcount_into(
            &Partition::new(&sendv[..], &scounts[..], &sdispls[..]),
            &mut PartitionMut::new(&mut recvv[..], &rcounts[..], &rdispls[..]),
        );
        let want: Vec<u64> = (0..size).flat_map(|from| (0..rcounts[from] as usize).map(move |i| (from * 100 + rank * 10 + i) as u64)).collect();
        assert_eq!(recvv, want, "alltoallv");
    }
    check(world, "broadcast, reduce, allreduce, scan, exscan, reduce_scatter_block, gather(v), scatter(v), allgather(v), alltoall(v) at every root, 8 B .. 560 KB");
    // Floating-point allreduce is bit-identical on every rank.
    let x = [1.0 / (rank as f64 + 3.0); 16];
    let mut s = [0.0f64; 16];
    world.all_reduce_into(&x[..], &mut s[..], SystemOperation::sum());
    let mut lo = [0.0f64; 16];
    world.all_reduce_into(&s[..], &mut lo[..], SystemOperation::min());
    assert!(lo.iter().zip(&s).all(|(a, b)| a.to_bits() == b.to_bits()));
    // Communicators: split by parity, duplicate.
    let half = world.split_by_color(mpi::topology::Color::with_value(rank as i32 % 2)).expect("color");
    let mut sum = 0i32;
    half.all_reduce_into(&(rank as i32), &mut sum, SystemOperation::sum());
    assert_eq!(sum, (0..size as i32).filter(|r| r % 2 == rank as i32 % 2).sum::<i32>());
    let dup = world.duplicate();
    dup.barrier();
    check(world, "bit-identical float allreduce, split, duplicate");
}

/// A user struct as an MPI datatype (no padding: 8 + 4 + 1 + 3 bytes).
#[derive(Equivalence, Clone, Copy, Debug, PartialEq, Default)]
#[repr(C)]
struct Sample {
    value: f64,
    rank: u32,
    valid: bool,
    spare: [u8; 3],
}

fn sample(rank: usize, i: usize) -> Sample {
    Sample { value: (value(rank, i) % 1000) as f64 * 0.5, rank: rank as u32, valid: (rank + i) % 3 != 0, spare: [i as u8; 3] }
}

fn derived_datatypes(world: &SimpleCommunicator) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let next = world.process_at_rank(((rank + 1) % size) as i32);
    let prev = world.process_at_rank(((rank + size - 1) % size) as i32);
    let mine: Vec<Sample> = (0..500).map(|i| sample(rank, i)).collect();
    let got = scope(|s| {
        let r = next.immediate_send(s, &mine[..]);
        let (got, _) = prev.receive_vec::<Sample>();
        r.wait();
        got
    });
    assert_eq!(got, (0..500).map(|i| sample((rank + size - 1) % size, i)).collect::<Vec<_>>(), "derived ring");
    for root in 0..size {
        let mut b = if rank == root { mine.clone() } else { vec![Sample::default(); 500] };
        world.process_at_rank(root as i32).broadcast_into(&mut b[..]);
        assert_eq!(b, (0..500).map(|i| sample(root, i)).collect::<Vec<_>>(), "derived broadcast");
    }
    let mut all = vec![Sample::default(); 2 * size];
    world.all_gather_into(&mine[..2], &mut all[..]);
    assert_eq!(all, (0..size).flat_map(|r| [sample(r, 0), sample(r, 1)]).collect::<Vec<_>>(), "derived allgather");
    // The largest valid value and its lowest rank, element-wise, by a user operation.
    let best = UserOperation::commutative(|input, inout| {
        let input: &[Sample] = input.downcast().expect("samples");
        let inout: &mut [Sample] = inout.downcast().expect("samples");
        for (x, y) in input.iter().zip(inout) {
            let key = |s: &Sample| (s.valid, s.value, u32::MAX - s.rank);
            if key(x) > key(y) {
                *y = *x;
            }
        }
    });
    let mut out = vec![Sample::default(); 500];
    world.all_reduce_into(&mine[..], &mut out[..], &best);
    for (i, got) in out.iter().enumerate() {
        let key = |s: &Sample| (s.valid, s.value, u32::MAX - s.rank);
        let want = (0..size).map(|r| sample(r, i)).max_by(|a, b| key(a).partial_cmp(&key(b)).expect("no NaN")).expect("ranks");
        assert_eq!(*got, want, "derived allreduce element {i}");
    }
    check(world, "derived struct datatype: send/receive, broadcast, allgather, allreduce with a user op");
}

/// A rank that computes for `ms` without calling MPI while a peer (perhaps in another
/// VM) sends to it and waits in a collective: the job must go on once it is back.
fn compute_between_collectives(world: &SimpleCommunicator, ms: u64) -> i32 {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let last = size - 1;
    let n = 1 << 20; // 8 MiB of u64
    let mut sum = 0u64;
    world.all_reduce_into(&(rank as u64), &mut sum, SystemOperation::sum());
    assert_eq!(sum, (size * (size - 1) / 2) as u64);
    if rank == last && last != 0 {
        // Busy: no MPI call, no yield, for `ms`.
        let until = toro::rt::now_ns() + ms * 1_000_000;
        let mut x = 1u64;
        while toro::rt::now_ns() < until {
            for _ in 0..1000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            }
        }
        core::hint::black_box(x);
        let got = world.process_at_rank(0).receive_vec::<u64>().0;
        assert!(got == data(0, n), "compute: the 8 MiB message arrived damaged");
    } else if rank == 0 && last != 0 {
        world.process_at_rank(last as i32).send(&data(0, n)[..]);
    }
    world.all_reduce_into(&(rank as u64 + 1), &mut sum, SystemOperation::sum());
    assert_eq!(sum, (size * (size + 1) / 2) as u64);
    world.barrier();
    if rank == 0 {
        println!("suite: compute {ms} ok");
    }
    0
}

fn main() -> i32 {
    let universe = mpi::initialize().expect("MPI initialize");
    let world = universe.world();
    let rank = world.rank();
    let args = toro::rt::args();
    match args.first().map(|s| s.as_str()) {
        Some("truncate") => {
            // Rank 0 sends 100 values, rank 1 offers room for 2: fatal MPI_ERR_TRUNCATE.
            if rank == 0 {
                world.process_at_rank(1).send(&[7u64; 100][..]);
            } else if rank == 1 {
                let mut small = [0u64; 2];
                world.process_at_rank(0).receive_into(&mut small[..]);
                println!("suite: FAIL: truncated receive returned");
                return 1;
            }
            world.barrier();
            return 0;
        }
        Some("count-mismatch") => {
            // Rank 0 broadcasts 8,000 bytes (messages), the others expect 16 (shared memory
            // in one VM): fatal MPI_ERR_COUNT on the others, not two paths waiting forever.
            let mut values = vec![7u64; if rank == 0 { 1000 } else { 2 }];
            world.process_at_rank(0).broadcast_into(&mut values[..]);
            if rank != 0 {
                println!("suite: FAIL: mismatched broadcast returned");
                return 1;
            }
            world.barrier();
            return 0;
        }
        Some("bad-rank") => {
            if rank == 2 {
                world.process_at_rank(world.size() + 5).send(&1u8);
            }
            world.barrier();
            return 0;
        }
        Some("other-vm") => {
            // Launched as VM 0 of a two-VM job: rank 0 sends to a rank in VM 1.
            if rank == 0 {
                world.process_at_rank(world.size() - 1).send(&1u8);
            }
            return 0;
        }
        Some("compute") => {
            let ms: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(3000);
            return compute_between_collectives(&world, ms);
        }
        _ => {}
    }
    // One rank per VM leads its VM's shared-memory communicator.
    let node = world.split_shared(rank);
    let mut vms = 0i32;
    world.all_reduce_into(&((node.rank() == 0) as i32), &mut vms, SystemOperation::sum());
    if rank == 0 {
        println!("suite: {} ranks on {} cores", world.size(), toro::rt::core_count());
        if vms > 1 && (vms as usize) < world.size() as usize {
            println!("suite: {} ranks in {vms} VMs: hierarchical collectives", world.size());
        }
    }
    let start = mpi::time();
    // `-- small`: largest messages 40 KB instead of 1.6 MB (slow TCG runs with many ranks).
    let small = args.first().map(|s| s.as_str()) == Some("small");
    point_to_point(&world, small);
    collectives(&world, small);
    derived_datatypes(&world);
    if rank == 0 {
        println!("suite: all passed in {:.1} ms", (mpi::time() - start) * 1e3);
    }
    0
}
