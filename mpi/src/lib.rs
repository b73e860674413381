//! Toro MPI: an MPI library shaped like the rsmpi crate (`mpi` 0.8), for programs
//! that run as unikernel ranks.
//!
//! ```ignore
//! use mpi::traits::*;
//! let universe = mpi::initialize().unwrap();
//! let world = universe.world();
//! let mut sum = 0;
//! world.all_reduce_into(&world.rank(), &mut sum, mpi::collective::SystemOperation::sum());
//! ```
//!
//! Layers, top to bottom:
//! - API (`communicator`, `point_to_point`, `request`, `collective`, `datatype`): rsmpi's
//!   names and shapes;
//! - `engine`: MPI matching, unexpected queue, synchronous-send acknowledgements;
//! - `router`: picks a transport per peer from a table indexed by location;
//! - `transport::Transport` and `environment::Environment`: the machine, provided by
//!   the VM runtime (or by `testing` on the host).
//!
//! All `unsafe` code sits in `raw` (byte views of `Equivalence` data), in `vbus`
//! (rendezvous sends over intra-vbus point the ring at the caller's buffer) and in
//! `collective::shm` (cache lines shared by the ranks of one VM for small collectives).
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
// `#[derive(Equivalence)]` names `::mpi::…`; this makes that path work in this
// crate's own tests too.
extern crate self as mpi;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod collective;
mod communicator;
pub mod datatype;
mod engine;
pub mod environment;
pub mod error;
pub mod point_to_point;
mod raw;
pub mod request;
pub mod router;
#[cfg(any(test, feature = "std"))]
pub mod testing;
pub mod transport;
#[cfg(any(test, feature = "vbus"))]
pub mod vbus;

#[cfg(test)]
mod tests;

pub use communicator::initialize;

/// Rank of a process in a communicator.
pub type Rank = i32;
/// Message tag.
pub type Tag = i32;
/// Number of values in a buffer.
pub type Count = i32;

/// Receive from any tag (`MPI_ANY_TAG`).
pub const ANY_TAG: Tag = -1;
/// Reported as the source of statuses without one (`MPI_ANY_SOURCE`).
pub const ANY_SOURCE: Rank = -2;
/// Largest valid tag (`MPI_TAG_UB`).
pub const TAG_UB: Tag = i32::MAX;

/// Communicators (rsmpi's `mpi::topology`).
pub mod topology {
    pub use crate::communicator::{Color, CommState, Communicator, Key, SimpleCommunicator};
    pub use crate::point_to_point::{AnyProcess, Process};
    pub use crate::{Rank, ANY_SOURCE};
}

/// Everything an MPI program usually imports: `use mpi::traits::*;`.
pub mod traits {
    pub use crate::collective::{CommunicatorCollectives, Operation, Root};
    pub use crate::communicator::Communicator;
    pub use crate::datatype::{Buffer, BufferMut, Equivalence};
    /// `#[derive(Equivalence)]` for structs of `Equivalence` fields (which must be
    /// `Copy` and without padding):
    ///
    /// ```
    /// use mpi::traits::*;
    /// #[derive(Equivalence, Clone, Copy, Debug, PartialEq, Default)]
    /// #[repr(C)]
    /// struct Particle { position: [f64; 3], mass: f64, id: u32, alive: bool, spare: [u8; 3] }
    /// assert_eq!(Particle::equivalent_datatype().size(), 40);
    /// ```
    ///
    /// Padding is a compile-time error (its bytes would be sent uninitialized):
    ///
    /// ```compile_fail
    /// use mpi::traits::*;
    /// #[derive(Equivalence, Clone, Copy)]
    /// #[repr(C)]
    /// struct Padded { small: u8, large: u64 }
    /// let _ = Padded::equivalent_datatype();
    /// ```
    ///
    /// So is a field that is not `Equivalence`:
    ///
    /// ```compile_fail
    /// use mpi::traits::*;
    /// #[derive(Equivalence, Clone, Copy)]
    /// struct Pointer { to: &'static u64 }
    /// ```
    #[cfg(feature = "derive")]
    pub use mpi_derive::Equivalence;
    pub use crate::point_to_point::{Destination, Source};
    pub use crate::request::Scope;
}

pub use communicator::Universe;

/// Wall-clock time in seconds (`MPI_Wtime`); 0 without an installed platform.
pub fn time() -> f64 {
    environment::platform().map_or(0.0, |platform| platform.now_ns() as f64 * 1e-9)
}

/// Resolution of `time()` in seconds (`MPI_Wtick`).
pub fn time_resolution() -> f64 {
    environment::platform().map_or(1.0, |platform| platform.clock_resolution_ns() as f64 * 1e-9)
}
