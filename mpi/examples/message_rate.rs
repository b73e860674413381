//! The OSU ports (`benches/osu/src/osu.rs`, the same file the Toro image and the
//! rsmpi host build use) on host threads over the real intra-vbus rings: two ranks,
//! by default `bw -m 1:1`, osu_bw's window of 64 one-byte messages. For counting
//! the MPI layer's instructions per message (`valgrind --tool=callgrind`) or
//! sampling it (`perf record`); the figures it prints on host threads are no
//! figures for the VM.
//!
//! cargo run --release -p mpi --features std --example message_rate [-- OSU ARGS]
extern crate alloc;

macro_rules! out {
    ($($arg:tt)*) => { println!($($arg)*) };
}

#[path = "../../benches/osu/src/osu.rs"]
mod osu;

fn args() -> Vec<String> {
    let given: Vec<String> = std::env::args().skip(1).collect();
    if given.is_empty() {
        ["bw", "-m", "1:1", "-i", "2000"].map(String::from).to_vec()
    } else {
        given
    }
}

fn main() {
    let statuses = mpi::testing::over_vbus::spawn_world(2, |universe| osu::run(&universe.world(), &args()));
    std::process::exit(statuses.into_iter().find(|&s| s != 0).unwrap_or(0));
}
