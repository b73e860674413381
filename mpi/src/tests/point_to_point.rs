//! Point-to-point: every call, matching corner cases, immediate operations.

use crate as mpi;
use mpi::datatype::MinMaxLoc;
use mpi::request::{scope, wait_all, wait_any};
use super::harness::{spawn_world, spawn_world_with, WorldOptions};
use mpi::topology::Color;
use mpi::traits::*;
use std::vec;
use std::vec::Vec;

#[test]
fn ring_pass() {
    let results = spawn_world(4, |universe| {
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let next = world.process_at_rank((rank + 1) % size);
        let previous = world.process_at_rank((rank + size - 1) % size);
        if rank == 0 {
            next.send(&1i32);
            let (value, status) = previous.receive::<i32>();
            assert_eq!(status.source_rank(), size - 1);
            value
        } else {
            let (value, _) = previous.receive::<i32>();
            next.send(&(value + 1));
            value
        }
    });
    assert_eq!(results, vec![4, 1, 2, 3]);
}

#[test]
fn every_receive_form() {
    spawn_world(2, |universe| {
        let world = universe.world();
        let peer = world.process_at_rank(1 - world.rank());
        if world.rank() == 0 {
            peer.send_with_tag(&7u64, 5);
            peer.send(&[1.5f64, 2.5, 3.5]);
            peer.send(&vec![true, false, true][..]);
            peer.send(&vec![10i16; 9]);
            peer.send(&MinMaxLoc::new(2.0f64, 7i64));
            peer.send(&[[1u8, 2], [3, 4]]);
            peer.synchronous_send_with_tag(&-1i128, 9);
            peer.send(&Vec::<u32>::new());
        } else {
            let (value, status) = peer.receive_with_tag::<u64>(5);
            assert_eq!((value, status.source_rank(), status.tag()), (7, 0, 5));
            assert_eq!(status.count(u64::equivalent_datatype()), 1);
            let mut array = [0f64; 3];
            let status = peer.receive_into(&mut array);
            assert_eq!(array, [1.5, 2.5, 3.5]);
            assert_eq!(status.count(f64::equivalent_datatype()), 3);
            let (flags, _) = peer.receive_vec::<bool>();
            assert_eq!(flags, vec![true, false, true]);
            let mut shorts = vec![0i16; 12];
            let status = peer.receive_into(&mut shorts[..]);
            assert_eq!(status.count(i16::equivalent_datatype()), 9);
            assert_eq!(&shorts[..9], &[10i16; 9]);
            let (loc, _) = peer.receive::<MinMaxLoc<f64, i64>>();
            assert_eq!(loc, MinMaxLoc::new(2.0, 7));
            let (nested, _) = peer.receive::<[[u8; 2]; 2]>();
            assert_eq!(nested, [[1, 2], [3, 4]]);
            let (big, status) = world.any_process().receive::<i128>();
            assert_eq!((big, status.tag()), (-1, 9));
            let (empty, status) = peer.receive_vec::<u32>();
            assert!(empty.is_empty());
            assert_eq!(status.count(u32::equivalent_datatype()), 0);
        }
    });
}

#[test]
fn tags_select_messages_out_of_order() {
    spawn_world(2, |universe| {
        let world = universe.world();
        if world.rank() == 0 {
            for tag in 1..=5 {
                world.process_at_rank(1).send_with_tag(&(tag * 100), tag);
            }
        } else {
            for tag in (1..=5).rev() {
                let (value, status) = world.process_at_rank(0).receive_with_tag::<i32>(tag);
                assert_eq!((value, status.tag()), (tag * 100, tag));
            }
        }
    });
}

#[test]
fn messages_of_one_pair_never_overtake() {
    spawn_world(2, |universe| {
        let world = universe.world();
        if world.rank() == 0 {
            for i in 0..2000u32 {
                world.process_at_rank(1).send_with_tag(&i, (i % 3) as i32);
            }
        } else {
            for i in 0..2000u32 {
                let (value, _) = world.any_process().receive::<u32>();
                assert_eq!(value, i);
            }
        }
    });
}

#[test]
fn any_source_receives_every_message_in_per_sender_order() {
    let size = 8;
    spawn_world(size, |universe| {
        let world = universe.world();
        let per_sender = 200u32;
        if world.rank() == 0 {
            let mut next = vec![0u32; world.size() as usize];
            for _ in 0..per_sender * (world.size() as u32 - 1) {
                let ([sender, seq], status) = world.any_process().receive::<[u32; 2]>();
                assert_eq!(sender as i32, status.source_rank());
                assert_eq!(seq, next[sender as usize], "per-pair order");
                next[sender as usize] += 1;
            }
            assert!(next[1..].iter().all(|&n| n == per_sender));
            assert!(world.any_process().immediate_probe().is_none());
        } else {
            for seq in 0..per_sender {
                world.process_at_rank(0).send(&[world.rank() as u32, seq]);
            }
        }
    });
}

#[test]
fn probe_then_receive() {
    spawn_world(3, |universe| {
        let world = universe.world();
        match world.rank() {
            0 => {
                for tag in [2, 1] {
                    let status = world.any_process().probe_with_tag(tag);
                    let count = status.count(i64::equivalent_datatype()) as usize;
                    let mut buffer = vec![0i64; count];
                    let received = world.process_at_rank(status.source_rank()).receive_into_with_tag(&mut buffer[..], status.tag());
                    assert_eq!(received, status);
                    assert_eq!(buffer, vec![status.source_rank() as i64; count]);
                }
                let (message, status) = world.process_at_rank(1).matched_probe_with_tag(8);
                assert_eq!(status.count(u8::equivalent_datatype()), 3);
                let (bytes, _) = message.matched_receive_vec::<u8>();
                assert_eq!(bytes, vec![1, 2, 3]);
                let (message, _) = world.any_process().matched_probe();
                let mut value = 0u16;
                message.matched_receive_into(&mut value);
                assert_eq!(value, 99);
            }
            rank => {
                world.process_at_rank(0).send_with_tag(&vec![rank as i64; rank as usize * 10], rank);
                if rank == 1 {
                    world.process_at_rank(0).send_with_tag(&[1u8, 2, 3], 8);
                    world.process_at_rank(0).send_with_tag(&99u16, 8);
                }
            }
        }
    });
}

#[test]
fn synchronous_send_waits_for_the_match() {
    spawn_world(2, |universe| {
        let world = universe.world();
        if world.rank() == 0 {
            let start = mpi::time();
            world.process_at_rank(1).synchronous_send(&1u8);
            let waited = mpi::time() - start;
            assert!(waited >= 0.08, "ssend returned after {waited} s, before the receive");
            // An immediate synchronous send is not complete before the match either.
            scope(|scope| {
                let request = world.process_at_rank(1).immediate_synchronous_send(scope, &2u8);
                let request = request.test().expect_err("not matched yet");
                world.process_at_rank(1).send_with_tag(&0u8, 1); // go-ahead
                request.wait();
            });
        } else {
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert_eq!(world.process_at_rank(0).receive::<u8>().0, 1);
            assert_eq!(world.process_at_rank(0).receive_with_tag::<u8>(1).0, 0);
            assert_eq!(world.process_at_rank(0).receive::<u8>().0, 2);
        }
    });
}

#[test]
fn ten_thousand_outstanding_immediate_sends() {
    // eager_limit 0: every send completes only once received (rendezvous-like).
    let mut options = WorldOptions::new(2);
    options.eager_limit = 0;
    spawn_world_with(options, |universe| {
        let world = universe.world();
        const N: usize = 10_000;
        if world.rank() == 0 {
            let values: Vec<u64> = (0..N as u64).collect();
            scope(|scope| {
                let requests: Vec<_> = values.iter().map(|v| world.process_at_rank(1).immediate_send_with_tag(scope, v, (v % 7) as i32)).collect();
                assert_eq!(wait_all(requests).len(), N);
            });
        } else {
            let mut slots = vec![0u64; N];
            scope(|scope| {
                let requests: Vec<_> = slots.iter_mut().map(|slot| world.process_at_rank(0).immediate_receive_into(scope, slot)).collect();
                let statuses = wait_all(requests);
                assert!(statuses.iter().enumerate().all(|(i, s)| s.tag() == (i % 7) as i32));
            });
            assert!(slots.iter().enumerate().all(|(i, &v)| v == i as u64));
        }
    });
}

#[test]
fn wait_any_and_test() {
    spawn_world(2, |universe| {
        let world = universe.world();
        if world.rank() == 0 {
            world.process_at_rank(1).receive::<u8>(); // receives are posted
            for tag in (0..4).rev() {
                world.process_at_rank(1).send_with_tag(&(tag as u32), tag);
            }
        } else {
            let mut slots = [0u32; 4];
            scope(|scope| {
                let mut requests = Vec::new();
                for (tag, slot) in slots.iter_mut().enumerate() {
                    requests.push(world.process_at_rank(0).immediate_receive_into_with_tag(scope, slot, tag as i32));
                }
                let first = requests.remove(0);
                let first = first.test().expect_err("nothing sent yet");
                requests.insert(0, first);
                world.process_at_rank(0).send(&0u8);
                let mut tags = Vec::new();
                while let Some((_, status)) = wait_any(&mut requests) {
                    tags.push(status.tag());
                }
                tags.sort();
                assert_eq!(tags, vec![0, 1, 2, 3]);
            });
            assert_eq!(slots, [0, 1, 2, 3]);
        }
    });
}

#[test]
fn messages_to_self_and_unexpected_before_immediate_receive() {
    spawn_world(1, |universe| {
        let world = universe.world();
        let me = world.this_process();
        me.send_with_tag(&[4i32, 5], 1);
        let mut got = [0i32; 2];
        scope(|scope| {
            let request = me.immediate_receive_into(scope, &mut got);
            assert_eq!(request.wait().tag(), 1);
        });
        assert_eq!(got, [4, 5]);
        let status = me.immediate_probe();
        assert!(status.is_none());
    });
}

#[test]
fn large_messages_over_rendezvous() {
    let mut options = WorldOptions::new(2);
    options.eager_limit = 4096;
    spawn_world_with(options, |universe| {
        let world = universe.world();
        let big: Vec<u32> = (0..(1 << 18)).collect(); // 1 MiB
        let peer = world.process_at_rank(1 - world.rank());
        let mut received = vec![0u32; big.len()];
        // Both send first: immediate sends keep this from deadlocking.
        scope(|scope| {
            let send = peer.immediate_send(scope, &big[..]);
            peer.receive_into(&mut received[..]);
            send.wait();
        });
        assert!(received == big);
    });
}

#[test]
fn communicators_isolate_traffic() {
    spawn_world(6, |universe| {
        let world = universe.world();
        let copy = world.duplicate();
        assert_eq!((copy.rank(), copy.size()), (world.rank(), world.size()));
        let peer = (world.rank() + 1) % world.size();
        let from = (world.rank() + world.size() - 1) % world.size();
        world.process_at_rank(peer).send(&1i32);
        copy.process_at_rank(peer).send(&2i32);
        // The duplicate's message is matched only on the duplicate.
        assert_eq!(copy.process_at_rank(from).receive::<i32>().0, 2);
        assert_eq!(world.process_at_rank(from).receive::<i32>().0, 1);

        let parity = world.rank() % 2;
        let half = world.split_by_color_with_key(Color::with_value(parity), -world.rank()).expect("colored");
        assert_eq!(half.size(), 3);
        // Keys descend with world rank, so ranks are reversed.
        assert_eq!(half.rank(), 2 - world.rank() / 2);
        let mut sum = 0;
        half.all_reduce_into(&world.rank(), &mut sum, mpi::collective::SystemOperation::sum());
        assert_eq!(sum, if parity == 0 { 6 } else { 9 });
        let none = world.split_by_color(if world.rank() == 0 { Color::undefined() } else { Color::with_value(0) });
        assert_eq!(none.is_none(), world.rank() == 0);
        if let Some(rest) = none {
            assert_eq!((rest.size(), rest.rank()), (5, world.rank() - 1));
            rest.barrier();
        }
    });
}

#[test]
fn time_initialize_and_vm_layout() {
    let mut options = WorldOptions::new(4);
    options.vms = 2;
    mpi::testing::run_world(options, || {
        let universe = mpi::initialize().expect("first initialize");
        assert!(mpi::initialize().is_none(), "second initialize in the same rank");
        let (t0, t1) = (mpi::time(), mpi::time());
        assert!(t1 >= t0 && mpi::time_resolution() > 0.0);
        let world = universe.world();
        let topology = world.state.topology();
        assert_eq!(topology.vm_groups, vec![vec![0, 1], vec![2, 3]]);
        // Reverse order inside each VM by key.
        let node = world.split_shared(-world.rank());
        assert_eq!((node.size(), node.rank()), (2, 1 - world.rank() % 2));
        world.barrier();
    })
    .expect("job");
}
