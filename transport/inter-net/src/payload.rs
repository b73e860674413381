//! A message's bytes while it waits to be framed: copied (short messages, the send
//! completes at once) or borrowed from the sender's buffer (long ones, streamed from
//! there chunk by chunk and completed when the last byte was handed to TCP).
#![allow(unsafe_code)]

use alloc::vec::Vec;

pub enum Payload {
    Owned(Vec<u8>),
    Borrowed(Borrowed),
}

/// The sender's buffer of a send in progress.
pub struct Borrowed {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the buffer is only read, by whichever rank drives the link, and the MPI layer
// neither writes nor frees it until the send reports completion (see `Payload::borrow`).
unsafe impl Send for Borrowed {}

impl Payload {
    /// Borrows `bytes` until the send completes.
    ///
    /// # Safety
    /// `bytes` must stay valid and unchanged until the ticket of this send was reported
    /// complete — what `mpi::transport::Transport::start_send` promises its transports.
    pub unsafe fn borrow(bytes: &[u8]) -> Payload {
        Payload::Borrowed(Borrowed { ptr: bytes.as_ptr(), len: bytes.len() })
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Owned(bytes) => bytes,
            // SAFETY: `borrow`'s contract keeps the buffer valid and unchanged while
            // this payload is queued (it is dropped when its last byte was sent).
            Payload::Borrowed(b) => unsafe { core::slice::from_raw_parts(b.ptr, b.len) },
        }
    }
}
