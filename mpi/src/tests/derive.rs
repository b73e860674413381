//! `#[derive(Equivalence)]`: derived structs in point-to-point messages and
//! collectives; system operations refuse them, user operations reduce them; bytes
//! that are not a valid value (a `bool` field holding 2) are refused on receipt.

use crate as mpi;
use super::harness::{catch_error, spawn_world_with, WorldOptions};
use mpi::collective::{SystemOperation, UserOperation};
use mpi::error::ErrorClass;
use mpi::traits::*;
use std::vec;
use std::vec::Vec;

#[derive(Equivalence, Clone, Copy, Debug, PartialEq, Default)]
#[repr(C)]
struct Particle {
    position: [f64; 3],
    mass: f64,
    id: u32,
    alive: bool,
    spare: [u8; 3],
}

#[derive(Equivalence, Clone, Copy, Debug, PartialEq, Default)]
struct Cell(i32, [f32; 2]);

/// Derived structs nest.
#[derive(Equivalence, Clone, Copy, Debug, PartialEq, Default)]
#[repr(C)]
struct Pair {
    particle: Particle,
    cells: [Cell; 2],
}

fn particle(rank: usize, i: usize) -> Particle {
    Particle { position: [rank as f64, i as f64, 0.5], mass: 1.0 + i as f64, id: (rank * 100 + i) as u32, alive: (rank + i) % 2 == 0, spare: [rank as u8; 3] }
}

#[test]
fn derived_structs_travel_in_messages_and_collectives() {
    for n in [1usize, 2, 5] {
        let mut options = WorldOptions::new(n);
        options.eager_limit = 128; // rendezvous-style completion for the larger ones
        options.vms = if n == 5 { 2 } else { 1 };
        spawn_world_with(options, move |universe| {
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            assert_eq!(Particle::equivalent_datatype().size(), core::mem::size_of::<Particle>());
            assert_eq!(Pair::equivalent_datatype().size(), core::mem::size_of::<Pair>());

            // Point to point around a ring.
            let mine: Vec<Particle> = (0..7).map(|i| particle(rank, i)).collect();
            let (right, left) = ((rank + 1) % size, (rank + size - 1) % size);
            mpi::request::scope(|scope| {
                let send = world.process_at_rank(right as i32).immediate_send(scope, &mine[..]);
                let (received, status) = world.process_at_rank(left as i32).receive_vec::<Particle>();
                assert_eq!(status.count(Particle::equivalent_datatype()), 7);
                assert_eq!(received, (0..7).map(|i| particle(left, i)).collect::<Vec<_>>());
                send.wait();
            });

            // Broadcast, gather, all-gather, all-to-all.
            let root = world.process_at_rank((size - 1) as i32);
            let mut pair = if rank == size - 1 { Pair { particle: particle(9, 9), cells: [Cell(1, [2.0, 3.0]), Cell(4, [5.0, 6.0])] } } else { Pair::default() };
            root.broadcast_into(&mut pair);
            assert_eq!(pair.cells[1], Cell(4, [5.0, 6.0]));
            assert_eq!(pair.particle, particle(9, 9));
            if rank == size - 1 {
                let mut all = vec![Particle::default(); size];
                root.gather_into_root(&mine[0], &mut all[..]);
                assert_eq!(all, (0..size).map(|r| particle(r, 0)).collect::<Vec<_>>());
            } else {
                root.gather_into(&mine[0]);
            }
            let mut all = vec![Particle::default(); 2 * size];
            world.all_gather_into(&mine[..2], &mut all[..]);
            assert_eq!(all, (0..size).flat_map(|r| [particle(r, 0), particle(r, 1)]).collect::<Vec<_>>());
            let outgoing: Vec<Cell> = (0..size).map(|to| Cell((rank * 10 + to) as i32, [rank as f32, to as f32])).collect();
            let mut incoming = vec![Cell::default(); size];
            world.all_to_all_into(&outgoing[..], &mut incoming[..]);
            assert_eq!(incoming, (0..size).map(|from| Cell((from * 10 + rank) as i32, [from as f32, rank as f32])).collect::<Vec<_>>());

            // Reductions: a user operation, short and long (Rabenseifner) vectors.
            let heaviest = UserOperation::commutative(|input, inout| {
                let input: &[Particle] = input.downcast().expect("particles");
                let inout: &mut [Particle] = inout.downcast().expect("particles");
                for (x, y) in input.iter().zip(inout) {
                    if (x.mass, x.id) > (y.mass, y.id) {
                        *y = *x;
                    }
                }
            });
            for count in [3usize, 300] {
                let values: Vec<Particle> = (0..count).map(|i| Particle { mass: ((rank * 7 + i) % 5) as f64, ..particle(rank, i) }).collect();
                let mut out = vec![Particle::default(); count];
                world.all_reduce_into(&values[..], &mut out[..], &heaviest);
                for (i, value) in out.iter().enumerate() {
                    let best = (0..size)
                        .map(|r| Particle { mass: ((r * 7 + i) % 5) as f64, ..particle(r, i) })
                        .max_by(|a, b| (a.mass, a.id).partial_cmp(&(b.mass, b.id)).expect("no NaN"))
                        .expect("ranks");
                    assert_eq!(*value, best, "element {i} of {count}");
                }
            }

            // System operations do not apply to structs.
            let mut out = Particle::default();
            let error = catch_error(&world, || world.all_reduce_into(&mine[0], &mut out, SystemOperation::sum())).expect_err("sum of structs");
            assert_eq!(error.class, ErrorClass::Op, "{error:?}");
            world.barrier();
        });
    }
}

#[test]
fn bytes_that_are_not_a_valid_struct_are_refused() {
    spawn_world_with(WorldOptions::new(2), |universe| {
        let world = universe.world();
        let size = core::mem::size_of::<Particle>();
        let alive = core::mem::offset_of!(Particle, alive);
        if world.rank() == 0 {
            let mut bytes = vec![0u8; size];
            bytes[alive] = 1;
            world.process_at_rank(1).send(&bytes[..]);
            bytes[alive] = 2;
            world.process_at_rank(1).send(&bytes[..]);
        } else {
            let mut good = Particle::default();
            world.process_at_rank(0).receive_into(&mut good);
            assert!(good.alive);
            let mut bad = Particle::default();
            let error = catch_error(&world, || world.process_at_rank(0).receive_into(&mut bad)).expect_err("bool byte 2");
            assert_eq!(error.class, ErrorClass::Type, "{error:?}");
        }
    });
}
