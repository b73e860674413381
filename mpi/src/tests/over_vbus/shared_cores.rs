//! intra-vbus specifics: several ranks per core (one endpoint, per-rank inboxes),
//! ring back-pressure, and the router's table mixing vbus (same VM) with the
//! in-memory fabric (other VMs).

use crate as mpi;
use mpi::collective::SystemOperation;
use mpi::request::scope;
use mpi::testing::{Fabric, WorldOptions};
use mpi::traits::*;
use std::time::Duration;
use std::vec;
use std::vec::Vec;

use super::harness::spawn_world_with;

fn shared(size: usize, cores: usize) -> WorldOptions {
    let mut options = WorldOptions::new(size);
    options.fabric = Fabric::IntraVbus { cores };
    options.timeout = Duration::from_secs(60);
    options
}

/// Eight ranks on two cores: every pair exchanges small and large (rendezvous)
/// messages with checksums, whether the peer shares the core or not.
#[test]
fn eight_ranks_on_two_cores_all_pairs() {
    let sums = spawn_world_with(shared(8, 2), |universe| {
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let mut total = 0u64;
        for len in [3usize, 700, 5000, 70_000] {
            let outgoing: Vec<Vec<u32>> =
                (0..size).map(|to| (0..len).map(|i| (rank as u32) << 24 ^ (to as u32) << 16 ^ i as u32).collect()).collect();
            let mut incoming: Vec<Vec<u32>> = (0..size).map(|_| vec![0u32; len]).collect();
            scope(|scope| {
                let mut requests = Vec::new();
                for (from, buffer) in incoming.iter_mut().enumerate() {
                    requests.push(world.process_at_rank(from as i32).immediate_receive_into(scope, &mut buffer[..]));
                }
                for (to, data) in outgoing.iter().enumerate() {
                    requests.push(world.process_at_rank(to as i32).immediate_send(scope, &data[..]));
                }
                for request in requests {
                    request.wait();
                }
            });
            for (from, buffer) in incoming.iter().enumerate() {
                for (i, &v) in buffer.iter().enumerate() {
                    assert_eq!(v, (from as u32) << 24 ^ (rank as u32) << 16 ^ i as u32, "len {len} from {from}");
                }
                total += buffer.iter().map(|&v| v as u64).sum::<u64>();
            }
        }
        total
    });
    assert_eq!(sums.len(), 8);
}

/// Collectives with several ranks per core, then a barrier storm.
#[test]
fn collectives_with_four_ranks_per_core() {
    let results = spawn_world_with(shared(8, 2), |universe| {
        let world = universe.world();
        let rank = world.rank() as u64;
        let mut sum = 0u64;
        world.all_reduce_into(&rank, &mut sum, SystemOperation::sum());
        let mut all = vec![0u64; 8];
        world.all_gather_into(&(rank * rank), &mut all[..]);
        for _ in 0..200 {
            world.barrier();
        }
        let mut big = if rank == 3 { (0..100_000u64).collect::<Vec<_>>() } else { vec![0; 100_000] };
        world.process_at_rank(3).broadcast_into(&mut big[..]);
        assert!(big.iter().enumerate().all(|(i, &v)| v == i as u64));
        (sum, all)
    });
    for (sum, all) in results {
        assert_eq!(sum, 28);
        assert_eq!(all, (0..8u64).map(|r| r * r).collect::<Vec<_>>());
    }
}

/// More messages in flight than a ring holds (16 here), both directions at once,
/// before anyone receives: back-pressure, never loss, never deadlock.
#[test]
fn head_to_head_floods_past_the_ring_size() {
    spawn_world_with(shared(2, 0), |universe| {
        let world = universe.world();
        let peer = world.process_at_rank(1 - world.rank());
        let sent: Vec<Vec<u8>> = (0..200).map(|i| vec![(i % 251) as u8; if i % 3 == 0 { 9000 } else { 100 }]).collect();
        let mut got: Vec<Vec<u8>> = (0..200).map(|i| vec![0u8; if i % 3 == 0 { 9000 } else { 100 }]).collect();
        scope(|scope| {
            let sends: Vec<_> = sent.iter().map(|data| peer.immediate_send(scope, &data[..])).collect();
            let receives: Vec<_> = got.iter_mut().map(|buffer| peer.immediate_receive_into(scope, &mut buffer[..])).collect();
            for request in sends.into_iter().chain(receives) {
                request.wait();
            }
        });
        assert_eq!(got, sent);
    });
}

/// Two VMs: same-VM peers over vbus, the others over the in-memory fabric
/// (hierarchical collectives take both paths).
#[test]
fn two_vms_route_by_table() {
    let mut options = shared(6, 2);
    options.vms = 2;
    let results = spawn_world_with(options, |universe| {
        let world = universe.world();
        let rank = world.rank();
        let next = world.process_at_rank((rank + 1) % 6);
        let previous = world.process_at_rank((rank + 5) % 6);
        let token = if rank == 0 {
            next.send(&1i64);
            previous.receive::<i64>().0
        } else {
            let (v, _) = previous.receive::<i64>();
            next.send(&(v * 2));
            v
        };
        let mut max = 0i32;
        world.all_reduce_into(&rank, &mut max, SystemOperation::max());
        (token, max)
    });
    assert_eq!(results.iter().map(|r| r.0).collect::<Vec<_>>(), vec![32, 1, 2, 4, 8, 16]);
    assert!(results.iter().all(|r| r.1 == 5));
}

/// Eight ranks on two cores taking turns like the VM's cooperative rank threads
/// (one runs per core; the core switches only when a rank yields or waits).
fn cooperative(size: usize, cores: usize) -> WorldOptions {
    let mut options = shared(size, cores);
    options.cooperative = true;
    options.timeout = Duration::from_secs(30);
    options
}

/// The mpi-suite's end of its outstanding-immediate check: every rank sends, then
/// polls `test` in a loop for the message from its predecessor, which lives on the
/// other core and may not have run yet. A `test` that never lets the other ranks of
/// the core run spins forever there (the 8-ranks-on-2-vCPUs VM hang).
#[test]
fn a_test_loop_lets_the_other_ranks_of_its_core_run() {
    let got = spawn_world_with(cooperative(8, 2), |universe| {
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let next = world.process_at_rank((rank + 1) % size);
        let prev = world.process_at_rank((rank + size - 1) % size);
        let mut buf = [0u64; 1];
        let mut polls = 0u64;
        scope(|s| {
            let mut r = Some(prev.immediate_receive_into(s, &mut buf[..]));
            next.send(&[rank as u64 + 100][..]);
            while let Some(req) = r.take() {
                if let Err(again) = req.test() {
                    polls += 1;
                    r = Some(again);
                }
            }
        });
        // And the same with immediate_probe.
        next.send(&(rank as u64));
        while prev.immediate_probe().is_none() {
            polls += 1;
        }
        let (v, _) = prev.receive::<u64>();
        assert_eq!(v, ((rank + size - 1) % size) as u64);
        let _ = polls;
        buf[0]
    });
    assert_eq!(got, (0..8u64).map(|r| (r + 7) % 8 + 100).collect::<Vec<_>>());
}

/// 10,000 outstanding immediate sends per rank around the ring (every one crosses
/// to the other core, rings of 16), then wait_any over the receives, with four
/// cooperative ranks per core: ranks stuck on a full ring must keep draining it.
#[test]
fn ten_thousand_outstanding_immediate_sends_with_cooperative_ranks() {
    spawn_world_with(cooperative(8, 2), |universe| {
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let next = world.process_at_rank(((rank + 1) % size) as i32);
        let prev = world.process_at_rank(((rank + size - 1) % size) as i32);
        let count = 10_000;
        let outgoing: Vec<u32> = (0..count as u32).map(|i| i ^ (rank as u32) << 20).collect();
        let mut incoming = vec![0u32; count];
        scope(|s| {
            let mut receives: Vec<_> = incoming.chunks_mut(1).map(|c| prev.immediate_receive_into(s, c)).collect();
            let sends: Vec<_> = outgoing.chunks(1).map(|c| next.immediate_send(s, c)).collect();
            mpi::request::wait_all(sends);
            let mut done = 0;
            while mpi::request::wait_any(&mut receives).is_some() {
                done += 1;
            }
            assert_eq!(done, count);
        });
        let from = ((rank + size - 1) % size) as u32;
        assert!(incoming.iter().enumerate().all(|(i, &v)| v == i as u32 ^ from << 20));
        world.barrier();
    });
}
