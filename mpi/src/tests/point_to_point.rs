use crate as mpi;
use mpi::testing::spawn_world;
use mpi::traits::*;

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
    assert_eq!(results, std::vec![4, 1, 2, 3]);
}
