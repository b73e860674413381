//! MPI error classes and the per-rank error mode.
//!
//! Every internal operation returns `Result<_, MpiError>`; the rsmpi-shaped public
//! methods hand errors to the communicator's error handler (see `ErrorMode`).

use alloc::string::String;
use core::fmt;

/// The MPI error classes we can raise (subset of MPI-1's `MPI_ERR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A rank outside `0..size`.
    Rank,
    /// A tag outside `0..=TAG_UB` (or `ANY_TAG` where a concrete tag is required).
    Tag,
    /// A root outside `0..size`.
    Root,
    /// A count or displacement that does not fit the buffers or the communicator.
    Count,
    /// A message longer than the receive buffer.
    Truncate,
    /// A message whose bytes are not a valid value of the receive type.
    Type,
    /// An operation that does not apply to the datatype.
    Op,
    /// A request still outstanding where none may be, or a misuse of requests.
    Request,
    /// The transport failed.
    Transport,
}

impl ErrorClass {
    /// Stable non-zero code, used as the job's exit status on a fatal error.
    pub fn code(self) -> i32 {
        match self {
            ErrorClass::Count => 2,
            ErrorClass::Type => 3,
            ErrorClass::Tag => 4,
            ErrorClass::Rank => 6,
            ErrorClass::Root => 7,
            ErrorClass::Op => 9,
            ErrorClass::Truncate => 15,
            ErrorClass::Request => 19,
            ErrorClass::Transport => 16,
        }
    }
}

/// An MPI error: its class and a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpiError {
    pub class: ErrorClass,
    pub detail: String,
}

impl MpiError {
    pub(crate) fn new(class: ErrorClass, detail: impl Into<String>) -> MpiError {
        MpiError { class, detail: detail.into() }
    }
}

impl fmt::Display for MpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MPI_ERR_{:?}: {}", self.class, self.detail)
    }
}

/// What a rank does when an MPI call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorMode {
    /// `MPI_ERRORS_ARE_FATAL`: print the rank and the error, end the job non-zero
    /// through the environment's `abort`.
    Fatal,
    /// `MPI_ERRORS_RETURN`, for tests: the failing call records the error and unwinds;
    /// `mpi::testing::catch_error` turns that into `Err(MpiError)`.
    Return,
}

pub(crate) type MpiResult<T> = Result<T, MpiError>;

/// Shorthand for building an `Err`.
pub(crate) fn fail<T>(class: ErrorClass, detail: impl Into<String>) -> MpiResult<T> {
    Err(MpiError::new(class, detail))
}
