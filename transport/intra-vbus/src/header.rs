//! What the MPI layer matches on, carried in front of every message.

/// How the payload travels; chosen by the transport from the length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Protocol {
    /// Copied into a ring-owned buffer by the sender; the send is complete at once.
    Eager = 0,
    /// The descriptor points at the sender's buffer; the receiver copies
    /// straight from it and the send completes when the descriptor comes back.
    Rendezvous = 1,
}

/// The part of the header the sender chooses. The transport never interprets
/// it: it routes by core, and ranks, tag, communicator and kind are the MPI
/// layer's business (several ranks may share a core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Envelope {
    /// Rank that sent the message.
    pub src_rank: u32,
    /// Rank the message is for.
    pub dst_rank: u32,
    /// MPI tag.
    pub tag: i32,
    /// Communicator id.
    pub comm: u64,
    /// MPI-layer message kind: data, synchronous-send data, its ack, control…
    /// (opaque to the transport; see [`Header::protocol`] for eager/rendezvous).
    pub kind: u8,
}

/// The header of a received message: the sender's [`Envelope`] plus what the
/// transport filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// As given to the send.
    pub env: Envelope,
    /// Payload length in bytes.
    pub len: u64,
    /// How the payload travels.
    pub protocol: Protocol,
}

impl Header {
    pub(crate) const EMPTY: Header = Header {
        env: Envelope { src_rank: 0, dst_rank: 0, tag: 0, comm: 0, kind: 0 },
        len: 0,
        protocol: Protocol::Eager,
    };
}
