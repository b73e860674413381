//! What the MPI layer needs from a way of moving bytes between ranks.
//!
//! A transport carries messages (a `Header` plus `header.len` payload bytes) from this
//! rank to peers and hands over incoming ones. It knows nothing about matching: the
//! MPI layer (`engine`) peeks at each incoming header and decides where the payload
//! goes — straight into a waiting receive buffer, or into the unexpected queue.
//!
//! Requirements on an implementation:
//! - FIFO per (source, destination) pair: MPI's non-overtaking rule relies on it.
//! - No size limit and no silent drop.
//! - `start_send` may complete at once (eager copy) or later (rendezvous); the MPI
//!   layer keeps `payload` alive and unchanged, and keeps calling `send_complete`,
//!   until it returns true (requests are scoped, see `request::scope`).
//!   An adapter that reads the sender's buffer later (rendezvous) must keep the pointer
//!   itself; this crate guarantees the memory stays valid until completion is reported.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// World rank as carried on the wire.
pub type WireRank = u32;

/// What a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// A standard-mode message.
    Data = 0,
    /// A synchronous-mode message: the receiver answers with `SyncAck` (same `cookie`)
    /// once a receive has matched it.
    SyncData = 1,
    /// Zero-length acknowledgement of a matched `SyncData`.
    SyncAck = 2,
}

/// The envelope of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub source: WireRank,
    pub dest: WireRank,
    pub tag: i32,
    /// Communicator context id (point-to-point and collective traffic of one
    /// communicator use different contexts).
    pub context: u32,
    /// Payload length in bytes.
    pub len: usize,
    pub kind: MessageKind,
    /// Sender-chosen id linking a `SyncData` to its `SyncAck`; 0 otherwise.
    pub cookie: u64,
}

/// Opaque handle of a started send, chosen by the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendTicket(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// This transport cannot reach `header.dest`.
    Unreachable,
    /// The transport is broken (peer gone, ring corrupted...).
    Failed,
}

/// One rank's endpoint of a transport (each rank owns its endpoints).
pub trait Transport {
    /// Starts sending `payload` (`header.len` bytes) to `header.dest`.
    fn start_send(&mut self, header: &Header, payload: &[u8]) -> Result<SendTicket, TransportError>;

    /// Whether the send finished, i.e. `payload` is no longer needed. Once this returned
    /// true the ticket is forgotten and is never asked about again.
    fn send_complete(&mut self, ticket: SendTicket) -> bool;

    /// Header of the next incoming message, not consumed: repeated calls return the same
    /// header until `receive_payload` consumes it.
    fn peek(&mut self) -> Option<Header>;

    /// Copies the payload of the message last returned by `peek` into `into`
    /// (`into.len() == header.len`) and consumes the message.
    fn receive_payload(&mut self, into: &mut [u8]);

    /// Consumes every message available now, in order: hands each header, with its
    /// payload read in place (`payload.len() == header.len`), to `sink`, which copies
    /// what it keeps. One call for a whole batch, where `peek` and `receive_payload`
    /// take two per message. Returns whether there was any message, or `None` (the
    /// default) if this transport does not lend its payloads: then the MPI layer peeks
    /// message by message.
    fn drain(&mut self, _sink: &mut dyn FnMut(&Header, &[u8])) -> Option<bool> {
        None
    }
}

/// A rank's messages to itself, kept in a queue. Always present in the router (index
/// `router::LOOPBACK`), so transports need not handle the self pair.
#[derive(Default)]
pub struct Loopback {
    queue: VecDeque<(Header, Vec<u8>)>,
}

impl Transport for Loopback {
    fn start_send(&mut self, header: &Header, payload: &[u8]) -> Result<SendTicket, TransportError> {
        self.queue.push_back((*header, payload.to_vec()));
        Ok(SendTicket(0))
    }
    fn send_complete(&mut self, _ticket: SendTicket) -> bool {
        true
    }
    fn peek(&mut self) -> Option<Header> {
        self.queue.front().map(|(header, _)| *header)
    }
    fn receive_payload(&mut self, into: &mut [u8]) {
        if let Some((_, payload)) = self.queue.pop_front() {
            into.copy_from_slice(&payload);
        }
    }
}
