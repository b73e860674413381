//! Every error case, in error-returning mode (`testing::catch_error`), and the fatal
//! default (the job ends non-zero with the rank and the error).

use crate as mpi;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::error::ErrorClass;
use mpi::testing::{catch_error, run_world, spawn_world, WorldOptions};
use mpi::traits::*;
use std::vec;

fn class<R>(result: Result<R, mpi::error::MpiError>) -> ErrorClass {
    match result {
        Ok(_) => panic!("expected an MPI error"),
        Err(error) => error.class,
    }
}

#[test]
fn invalid_arguments_are_errors_of_their_class() {
    spawn_world(2, |universe| {
        let world = universe.world();
        let size = world.size();
        assert_eq!(class(catch_error(&world, || world.process_at_rank(size).send(&1u8))), ErrorClass::Rank);
        assert_eq!(class(catch_error(&world, || world.process_at_rank(-1).receive::<u8>())), ErrorClass::Rank);
        assert_eq!(class(catch_error(&world, || world.process_at_rank(0).send_with_tag(&1u8, -3))), ErrorClass::Tag);
        assert_eq!(class(catch_error(&world, || world.any_process().receive_with_tag::<u8>(-7))), ErrorClass::Tag);
        // Roots: out of range, and the wrong variant for the caller.
        let mut x = 0u32;
        assert_eq!(class(catch_error(&world, || world.process_at_rank(size).broadcast_into(&mut x))), ErrorClass::Root);
        let me = world.this_process();
        assert_eq!(class(catch_error(&world, || me.gather_into(&x))), ErrorClass::Root);
        let other = world.process_at_rank(1 - world.rank());
        let mut all = [0u32; 2];
        assert_eq!(class(catch_error(&world, || other.gather_into_root(&x, &mut all))), ErrorClass::Root);
        // Counts: buffers that do not fit the communicator.
        let mut wrong = [0u32; 3];
        assert_eq!(class(catch_error(&world, || world.all_gather_into(&x, &mut wrong))), ErrorClass::Count);
        let mut buffer = [0u32; 4];
        assert_eq!(
            class(catch_error(&world, || world.all_gather_varcount_into(&x, &mut PartitionMut::new(&mut buffer[..], &[1, 1, 1][..], &[0, 1, 2][..])))),
            ErrorClass::Count
        );
        assert_eq!(
            class(catch_error(&world, || world.all_gather_varcount_into(&x, &mut PartitionMut::new(&mut buffer[..], &[1, 4][..], &[0, 1][..])))),
            ErrorClass::Count
        );
        assert_eq!(class(catch_error(&world, || world.all_to_all_into(&[1u8, 2, 3][..], &mut [0u8; 3][..]))), ErrorClass::Count);
        // Operations that do not apply to the datatype; mismatched datatypes.
        let mut y = 0f64;
        assert_eq!(class(catch_error(&world, || world.all_reduce_into(&1f64, &mut y, SystemOperation::bitwise_or()))), ErrorClass::Op);
        let mut z = 0i32;
        assert_eq!(class(catch_error(&world, || world.all_reduce_into(&1i32, &mut z, SystemOperation::min_loc()))), ErrorClass::Op);
        assert_eq!(class(catch_error(&world, || world.all_reduce_into(&1u32, &mut z, SystemOperation::sum()))), ErrorClass::Type);
        // The communicator still works after all that.
        world.all_reduce_into(&1i32, &mut z, SystemOperation::sum());
        assert_eq!(z, 2);
    });
}

#[test]
fn receive_buffer_too_small_is_truncate_never_a_cut() {
    spawn_world(2, |universe| {
        let world = universe.world();
        if world.rank() == 0 {
            let peer = world.process_at_rank(1);
            peer.send(&[1i32, 2, 3, 4]);
            peer.send(&7u64);
            peer.send(&[9u16; 3]);
            peer.send(&2u8); // not a valid bool
            peer.send(&[5i32, 6]);
            world.process_at_rank(1).receive::<u8>();
        } else {
            let peer = world.process_at_rank(0);
            let mut small = [0i32; 2];
            assert_eq!(class(catch_error(&world, || peer.receive_into(&mut small))), ErrorClass::Truncate);
            assert_eq!(small, [0, 0], "nothing written on truncation");
            assert_eq!(class(catch_error(&world, || peer.receive::<u32>())), ErrorClass::Truncate);
            let mut two = [0u16; 2];
            mpi::request::scope(|scope| {
                let request = peer.immediate_receive_into(scope, &mut two);
                assert_eq!(class(catch_error(&world, || request.wait())), ErrorClass::Truncate);
            });
            assert_eq!(class(catch_error(&world, || peer.receive::<bool>())), ErrorClass::Type);
            // The truncated messages were consumed; the next one is intact.
            peer.receive_into(&mut small);
            assert_eq!(small, [5, 6]);
            peer.send(&0u8);
        }
    });
}

#[test]
fn errors_are_fatal_by_default() {
    let outcome = run_world(WorldOptions::new(2), || {
        let universe = mpi::initialize().expect("setup");
        let world = universe.world();
        if world.rank() == 1 {
            world.process_at_rank(5).send(&1u8);
        }
        world.barrier();
    });
    let message = outcome.expect_err("the job must fail");
    assert!(message.contains("rank 1") && message.contains("Rank") && message.contains("status 6"), "{message}");

    let outcome = run_world(WorldOptions::new(3), || {
        let universe = mpi::initialize().expect("setup");
        let world = universe.world();
        if world.rank() == 2 {
            world.abort(42);
        }
        let mut z = 0;
        world.all_reduce_into(&1, &mut z, SystemOperation::sum());
    });
    let message = outcome.expect_err("the job must fail");
    assert!(message.contains("status 42"), "{message}");
}

#[test]
fn a_hung_job_times_out_instead_of_hanging_the_tests() {
    let mut options = WorldOptions::new(2);
    options.timeout = std::time::Duration::from_millis(300);
    let outcome = run_world(options, || {
        let universe = mpi::initialize().expect("setup");
        let world = universe.world();
        world.any_process().receive::<u8>(); // nobody sends
    });
    assert!(outcome.expect_err("timeout").contains("timed out"));
    let _ = vec![0u8; 0];
}
