//! What the MPI layer needs from the machine, and how `mpi::initialize()` finds it.
//!
//! The VM runtime implements `Environment` (one per rank) and `Platform` (one per
//! image), and calls `install` once before the app's `main`. On the host,
//! `mpi::testing` does the same with std threads.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

pub use crate::collective::shm::Arena;
use crate::raw;
use crate::router::RouteTable;
use crate::transport::Transport;

/// Where a rank runs: which VM of the job, which core inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub vm: u32,
    pub core: u32,
}

/// One rank's view of the machine.
pub trait Environment {
    /// This rank's id in `MPI_COMM_WORLD`.
    fn world_rank(&self) -> u32;
    /// Location of every rank of the job, indexed by world rank (its length is the world size).
    fn locations(&self) -> &[Location];
    /// Wall-clock time in nanoseconds (monotonic, comparable between ranks of one VM).
    fn now_ns(&self) -> u64;
    /// Resolution of `now_ns` in nanoseconds.
    fn clock_resolution_ns(&self) -> u64 {
        1
    }
    /// Called while an MPI call waits for a peer: spin a little, then let the other
    /// rank threads on this core run (cooperative scheduling) or halt until woken.
    /// It must return (the MPI layer polls its transports between calls).
    fn relax(&self);
    /// Called when a non-blocking MPI call (`Request::test`, `immediate_probe`) found
    /// nothing done: lets the other rank threads of this core run, and returns at once
    /// if none is ready. Never blocks. Without it, a rank polling `test` in a loop on a
    /// core shared with the very rank it waits for (cooperative threads) spins
    /// forever. Default: nothing (every rank has its own preemptible thread).
    fn yield_now(&self) {}
    /// Memory shared by the ranks of this VM for the small collectives of one
    /// communicator: the arena of collective context `context` whose members are the
    /// world ranks `group` (all in this VM), the same `Arc` for every member that asks.
    /// `None` (the default): collectives travel as messages only.
    fn collective_arena(&self, _context: u32, _group: &[u32]) -> Option<Arc<Arena>> {
        None
    }
    /// Wakes world rank `world_rank` (in this VM) if it blocks in `block`; a wake-up
    /// that finds it running makes its next `block` return at once.
    fn wake(&self, _world_rank: u32) {}
    /// Blocks until `wake` is called for this rank or a message may have arrived; may
    /// return early. The caller has announced that it sleeps and re-checked its
    /// condition just before: nothing may run on this core in between (no yield
    /// before the rank is registered as waiting). Default: `relax`.
    fn block(&self) {
        self.relax()
    }
    /// Ends the whole job with a non-zero `status` after printing `message`.
    fn abort(&self, status: i32, message: &str) -> !;
}

/// Everything one rank's MPI library is built from.
pub struct RankSetup {
    pub environment: Box<dyn Environment>,
    /// Transports to peers (not the loopback, which the router adds itself).
    pub transports: Vec<Box<dyn Transport>>,
    /// Which transport serves which peer (see `RouteTable`).
    pub routes: RouteTable,
}

/// The image-wide hook behind `mpi::initialize()`, `mpi::time()`.
pub trait Platform: Sync {
    /// The calling rank thread's setup; `None` if this thread is not a rank or already
    /// initialized MPI.
    fn setup_current_rank(&self) -> Option<RankSetup>;
    /// Wall-clock time in nanoseconds.
    fn now_ns(&self) -> u64;
    fn clock_resolution_ns(&self) -> u64 {
        1
    }
}

/// Registers the platform; the VM runtime glue calls this once at start-up.
/// Returns false (and changes nothing) if a platform was already installed.
pub fn install(platform: &'static dyn Platform) -> bool {
    raw::install_platform(platform)
}

pub(crate) fn platform() -> Option<&'static dyn Platform> {
    raw::platform()
}

pub use crate::communicator::Universe;
