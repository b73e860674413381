//! The OSU ports (`benches/osu/src/osu.rs`, the same file the Toro image uses)
//! built natively with rsmpi. Which MPI: `MPI_PKG_CONFIG=ompi` or `mpich` at
//! build time (see benches/osu/run.sh). `mpirun -np 2 osu latency [-m MAX] ...`
extern crate alloc;

macro_rules! out {
    ($($arg:tt)*) => { println!($($arg)*) };
}

#[path = "../../../src/osu.rs"]
mod osu;

fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

fn main() {
    let universe = mpi::initialize().expect("MPI initialize");
    let world = universe.world();
    let status = osu::run(&world, &args());
    drop(universe);
    std::process::exit(status);
}
