//! osu_bw's pattern at 1 byte on host threads over the real intra-vbus rings:
//! rank 0 starts a window of 64 immediate sends and waits for them, rank 1 posts
//! 64 immediate receives and waits, then acknowledges. For counting the MPI layer's
//! instructions per message (`valgrind --tool=callgrind`); the rate it prints on
//! host threads is no figure for the VM.
//!
//! cargo run --release -p mpi --features std --example message_rate [-- WINDOWS]
use mpi::request::{scope, wait_all};
use mpi::testing::over_vbus::spawn_world;
use mpi::traits::*;

const WINDOW: usize = 64;

fn main() {
    let windows: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let rates = spawn_world(2, move |universe| {
        let world = universe.world();
        let rank = world.rank();
        let peer = world.process_at_rank(1 - rank);
        let out = [1u8; 1];
        let mut inp = [[0u8; 1]; WINDOW];
        world.barrier();
        let start = std::time::Instant::now();
        for _ in 0..windows {
            if rank == 0 {
                scope(|s| {
                    let requests: Vec<_> = (0..WINDOW).map(|_| peer.immediate_send(s, &out[..])).collect();
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
        (windows * WINDOW) as f64 / start.elapsed().as_secs_f64()
    });
    println!("1-byte messages: {:.2} M/s on host threads", rates[0] / 1e6);
}
