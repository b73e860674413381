//! OSU micro-benchmarks on Toro MPI: `toro-mpirun -np 2 toro-osu.elf latency [-m MAX] [-i N] [-x N]`.
//! The benchmarks live in `osu.rs`, shared with the host build (`host/rsmpi`).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

macro_rules! out {
    ($($arg:tt)*) => { toro::println!($($arg)*) };
}

mod osu;

toro::main!(main);

fn args() -> Vec<String> {
    toro::rt::args()
}

fn main() -> i32 {
    let universe = mpi::initialize().expect("MPI initialize");
    let world = universe.world();
    osu::run(&world, &args())
}
