//! The per-VM protocol state, independent of the network stack: one `Link` per peer VM
//! turns queued messages into a byte stream (`Link::fill`) and a byte stream back into
//! messages (`Link::absorb`), and `Inboxes` holds what arrived for each local rank.
//!
//! - Messages go out in chunks of at most `chunk` bytes, one frame each; the pairs
//!   (source rank, destination rank) with something to send are served round robin,
//!   one chunk at a time, so every rank gets its share of the connection.
//! - Credits: a sender may have at most `window` wire bytes (headers included) of one
//!   pair not yet consumed by the receiving rank. The receiver refuses a peer that goes
//!   beyond (protocol error), and grants bytes back as its rank copies them out. So the
//!   memory held for arrived-but-unread chunks is at most `window` per remote
//!   source × local destination, and the TCP stream itself never stalls behind a rank
//!   that does not read (which could deadlock the other ranks sharing it).
//! - FIFO per pair: a pair's messages are queued and framed in order; the receiver
//!   checks each pair's sequence numbers and chunk offsets.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use mpi::transport::{Header, MessageKind};

use crate::frame::{Frame, Kind, HEADER_LEN};
use crate::payload::Payload;

/// Static facts about the job, shared by the links of one VM.
#[derive(Clone, Debug)]
pub struct Topology {
    pub my_vm: u32,
    /// VM of each world rank.
    pub vm_of_rank: Vec<u32>,
    pub job: u64,
    /// Credit per (source, destination) pair, in wire bytes.
    pub window: usize,
    /// Largest payload per frame.
    pub chunk: usize,
}

impl Topology {
    pub fn world(&self) -> u32 {
        self.vm_of_rank.len() as u32
    }
    pub fn vm_of(&self, rank: u32) -> Option<u32> {
        self.vm_of_rank.get(rank as usize).copied()
    }
    /// Ranks of one VM, for messages ("VM 1 (ranks 2-3)").
    pub fn describe_vm(&self, vm: u32) -> String {
        let ranks: Vec<u32> = (0..self.world()).filter(|&r| self.vm_of(r) == Some(vm)).collect();
        match (ranks.first(), ranks.last()) {
            (Some(first), Some(last)) if ranks.len() as u32 == last - first + 1 && first != last => format!("VM {} (ranks {}-{})", vm, first, last),
            _ => format!("VM {} (ranks {:?})", vm, ranks),
        }
    }
}

// ---- receiving side: what arrived for each local rank ----

struct Chunk {
    bytes: Vec<u8>,
    /// Wire bytes of its frame, granted back once the chunk is read.
    wire: usize,
}

struct Incoming {
    header: Header,
    seq: u32,
    /// Payload bytes arrived so far.
    arrived: usize,
    /// Payload bytes already copied out by `read_into`.
    read: usize,
    chunks: VecDeque<Chunk>,
}

/// Per local rank, the messages that started arriving, in arrival order of their first chunk.
pub struct Inboxes {
    by_rank: BTreeMap<u32, VecDeque<Incoming>>,
    /// Wire bytes read by local ranks and not yet granted back, per (remote source, local dest).
    to_grant: BTreeMap<(u32, u32), usize>,
    /// Local ranks a chunk arrived for since the node last took this list (each once).
    pub(crate) touched: Vec<u32>,
    /// Payload bytes copied out by `read_into` so far (progress of receptions).
    pub(crate) bytes_read: u64,
}

impl Inboxes {
    pub fn new(local_ranks: impl Iterator<Item = u32>) -> Inboxes {
        Inboxes { by_rank: local_ranks.map(|r| (r, VecDeque::new())).collect(), to_grant: BTreeMap::new(), touched: Vec::new(), bytes_read: 0 }
    }

    /// Header of `rank`'s next message, if its first chunk arrived.
    pub fn peek(&self, rank: u32) -> Option<Header> {
        self.by_rank.get(&rank)?.front().map(|m| m.header)
    }

    /// Whether `rank`'s next message is from `vm`'s ranks and not complete yet.
    pub fn front_source(&self, rank: u32) -> Option<(u32, bool)> {
        self.by_rank.get(&rank)?.front().map(|m| (m.header.source, m.arrived == m.header.len))
    }

    /// Copies what has arrived of `rank`'s front message into `into` (its bytes from
    /// `read` on); returns true and drops the message once all of it was copied.
    pub fn read_into(&mut self, rank: u32, into: &mut [u8]) -> bool {
        let Some(queue) = self.by_rank.get_mut(&rank) else { return true };
        let Some(message) = queue.front_mut() else { return true };
        let mut granted = 0;
        while let Some(chunk) = message.chunks.pop_front() {
            // `into` is header.len long (the Transport contract); a shorter one gets a prefix.
            let start = message.read.min(into.len());
            let end = (message.read + chunk.bytes.len()).min(into.len());
            into[start..end].copy_from_slice(&chunk.bytes[..end - start]);
            message.read += chunk.bytes.len();
            self.bytes_read += chunk.bytes.len() as u64;
            granted += chunk.wire;
        }
        let source = message.header.source;
        let done = message.arrived == message.header.len && message.chunks.is_empty();
        if done {
            queue.pop_front();
        }
        if granted > 0 {
            *self.to_grant.entry((source, rank)).or_insert(0) += granted;
        }
        done
    }

    fn push_chunk(&mut self, frame: &Frame, bytes: Vec<u8>) {
        let Some(queue) = self.by_rank.get_mut(&frame.dest) else { return };
        let wire = frame.wire_len();
        if frame.offset == 0 {
            let Some(header) = frame.header() else { return };
            queue.push_back(Incoming { header, seq: frame.seq, arrived: 0, read: 0, chunks: VecDeque::new() });
        }
        if let Some(message) = queue.iter_mut().rev().find(|m| m.header.source == frame.source && m.seq == frame.seq) {
            message.arrived += bytes.len();
            message.chunks.push_back(Chunk { bytes, wire });
            if !self.touched.contains(&frame.dest) {
                self.touched.push(frame.dest);
            }
        }
    }

    /// Grants of at least `threshold` bytes, taken out for sending.
    pub fn take_grants(&mut self, threshold: usize, out: &mut Vec<(u32, u32, usize)>) {
        self.to_grant.retain(|&(source, dest), bytes| {
            if *bytes >= threshold {
                out.push((source, dest, *bytes));
                false
            } else {
                true
            }
        });
    }

    /// Bytes held in chunks not yet read (for tests and statistics).
    pub fn buffered(&self) -> usize {
        self.by_rank.values().flat_map(|q| q.iter()).flat_map(|m| m.chunks.iter()).map(|c| c.bytes.len()).sum()
    }
}

// ---- sending side ----

struct Outgoing {
    header: Header,
    seq: u32,
    payload: Payload,
    /// Payload bytes framed so far.
    sent: usize,
    ticket: u64,
    started: bool,
}

#[derive(Default)]
struct PairTx {
    queue: VecDeque<Outgoing>,
    next_seq: u32,
}

#[derive(Default)]
struct PairRx {
    next_seq: u32,
    /// The message being received on this pair: (its first frame, payload bytes so far).
    current: Option<(Frame, u64)>,
    /// Wire bytes received and not granted back.
    outstanding: usize,
}

enum RxState {
    Header { bytes: [u8; HEADER_LEN], have: usize },
    Payload { frame: Frame, bytes: Vec<u8> },
}

/// The frame being written out.
struct TxFrame {
    header: [u8; HEADER_LEN],
    /// Bytes of header + payload written so far.
    written: usize,
    /// Which pair and payload range, for message frames.
    data: Option<((u32, u32), usize, usize)>,
    total: usize,
}

/// A protocol violation by the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// One peer VM: both directions of its connection.
pub struct Link {
    pub peer_vm: u32,
    hello_sent: bool,
    hello_received: bool,
    /// Pending credit grants (our receiving rank, their sending rank) → bytes.
    grants: VecDeque<(u32, u32, usize)>,
    tx_pairs: BTreeMap<(u32, u32), PairTx>,
    /// Credit left per (local source, remote dest).
    credit: BTreeMap<(u32, u32), usize>,
    /// Round-robin position: the pair served last.
    last_served: Option<(u32, u32)>,
    tx: Option<TxFrame>,
    rx_pairs: BTreeMap<(u32, u32), PairRx>,
    rx: RxState,
    /// Tickets whose message was written out completely.
    pub completed: BTreeSet<u64>,
    /// Local source rank of each ticket added to `completed` since the node last took this list.
    pub(crate) completed_senders: Vec<u32>,
    /// Counters.
    pub frames_sent: u64,
    pub frames_received: u64,
}

impl Link {
    pub fn new(peer_vm: u32) -> Link {
        Link {
            peer_vm,
            hello_sent: false,
            hello_received: false,
            grants: VecDeque::new(),
            tx_pairs: BTreeMap::new(),
            credit: BTreeMap::new(),
            last_served: None,
            tx: None,
            rx_pairs: BTreeMap::new(),
            rx: RxState::Header { bytes: [0; HEADER_LEN], have: 0 },
            completed: BTreeSet::new(),
            completed_senders: Vec::new(),
            frames_sent: 0,
            frames_received: 0,
        }
    }

    /// Queues a message (`header.dest` must be in this link's VM). `ticket` is reported
    /// in `completed` once the last byte was handed to `fill`'s caller.
    pub fn queue(&mut self, header: Header, payload: Payload, ticket: u64) {
        let pair = self.tx_pairs.entry((header.source, header.dest)).or_default();
        let seq = pair.next_seq;
        pair.next_seq = pair.next_seq.wrapping_add(1);
        pair.queue.push_back(Outgoing { header, seq, payload, sent: 0, ticket, started: false });
    }

    pub fn grant(&mut self, receiver: u32, sender: u32, bytes: usize) {
        self.grants.push_back((receiver, sender, bytes));
    }

    /// Whether anything waits to be written (queued messages or a frame half written).
    pub fn has_output(&self) -> bool {
        self.tx.is_some() || !self.hello_sent || !self.grants.is_empty() || self.tx_pairs.values().any(|p| !p.queue.is_empty())
    }

    /// Whether messages are queued or half received (a broken connection loses data).
    pub fn busy(&self) -> bool {
        self.tx.is_some() || self.tx_pairs.values().any(|p| !p.queue.is_empty()) || self.rx_pairs.values().any(|p| p.current.is_some())
    }

    /// Counters and credit state, for diagnostics.
    pub fn describe(&self) -> String {
        let queued: Vec<((u32, u32), usize)> = self.tx_pairs.iter().map(|(k, p)| (*k, p.queue.len())).collect();
        let outstanding: Vec<((u32, u32), usize)> = self.rx_pairs.iter().map(|(k, p)| (*k, p.outstanding)).collect();
        format!(
            "frames out {} in {}, half-written {}, queued {:?}, credit {:?}, received-not-granted {:?}, grants pending {}",
            self.frames_sent,
            self.frames_received,
            self.tx.is_some(),
            queued,
            self.credit,
            outstanding,
            self.grants.len()
        )
    }

    /// Picks the next frame to write: hello first, then grants, then one chunk of the
    /// next pair (round robin) that has something to send and credit for it.
    fn next_frame(&mut self, topo: &Topology) -> Option<TxFrame> {
        let mut header = [0u8; HEADER_LEN];
        if !self.hello_sent {
            self.hello_sent = true;
            Frame::hello(topo.my_vm, self.peer_vm, topo.world(), topo.job).encode(&mut header);
            return Some(TxFrame { header, written: 0, data: None, total: HEADER_LEN });
        }
        if let Some((receiver, sender, bytes)) = self.grants.pop_front() {
            Frame::credit(receiver, sender, bytes as u64).encode(&mut header);
            return Some(TxFrame { header, written: 0, data: None, total: HEADER_LEN });
        }
        let keys: Vec<(u32, u32)> = self.tx_pairs.iter().filter(|(_, p)| !p.queue.is_empty()).map(|(k, _)| *k).collect();
        if keys.is_empty() {
            return None;
        }
        let start = match self.last_served {
            Some(last) => keys.iter().position(|k| *k > last).unwrap_or(0),
            None => 0,
        };
        for i in 0..keys.len() {
            let key = keys[(start + i) % keys.len()];
            let credit = self.credit.entry(key).or_insert(topo.window);
            let pair = self.tx_pairs.get_mut(&key)?;
            let message = pair.queue.front_mut()?;
            let remaining = message.header.len - message.sent;
            if *credit <= HEADER_LEN || (remaining == 0 && message.started) {
                continue;
            }
            let chunk = remaining.min(topo.chunk).min(*credit - HEADER_LEN);
            let frame = Frame::message(&message.header, message.seq, message.sent as u64, chunk as u32);
            frame.encode(&mut header);
            *credit -= frame.wire_len();
            let range = (message.sent, message.sent + chunk);
            message.sent += chunk;
            message.started = true;
            self.last_served = Some(key);
            return Some(TxFrame { header, written: 0, data: Some((key, range.0, range.1)), total: HEADER_LEN + chunk });
        }
        None
    }

    /// Writes as much of the outgoing stream as fits in `out`; returns the bytes written.
    pub fn fill(&mut self, topo: &Topology, out: &mut [u8]) -> usize {
        let mut at = 0;
        while at < out.len() {
            if self.tx.is_none() {
                self.tx = self.next_frame(topo);
                if self.tx.is_none() {
                    break;
                }
            }
            let Some(frame) = self.tx.as_mut() else { break };
            // Header part.
            if frame.written < HEADER_LEN {
                let n = (HEADER_LEN - frame.written).min(out.len() - at);
                out[at..at + n].copy_from_slice(&frame.header[frame.written..frame.written + n]);
                frame.written += n;
                at += n;
            }
            // Payload part.
            if frame.written >= HEADER_LEN && frame.written < frame.total {
                if let Some((key, start, _)) = frame.data {
                    let from = start + frame.written - HEADER_LEN;
                    let n = (frame.total - frame.written).min(out.len() - at);
                    if let Some(message) = self.tx_pairs.get(&key).and_then(|p| p.queue.front()) {
                        out[at..at + n].copy_from_slice(&message.payload.bytes()[from..from + n]);
                    }
                    frame.written += n;
                    at += n;
                }
            }
            if frame.written == frame.total {
                let data = frame.data;
                self.tx = None;
                self.frames_sent += 1;
                if let Some((key, _, end)) = data {
                    if let Some(pair) = self.tx_pairs.get_mut(&key) {
                        if pair.queue.front().is_some_and(|m| end == m.header.len) {
                            if let Some(done) = pair.queue.pop_front() {
                                self.completed.insert(done.ticket);
                                if done.ticket != 0 {
                                    self.completed_senders.push(done.header.source);
                                }
                            }
                        }
                    }
                }
            }
        }
        at
    }

    /// Consumes incoming stream bytes, delivering chunks into `inboxes`. Returns how
    /// many bytes were consumed (all of `input` unless an error stops it).
    pub fn absorb(&mut self, topo: &Topology, inboxes: &mut Inboxes, input: &[u8]) -> Result<usize, ProtocolError> {
        let mut at = 0;
        while at < input.len() {
            match &mut self.rx {
                RxState::Header { bytes, have } => {
                    let n = (HEADER_LEN - *have).min(input.len() - at);
                    bytes[*have..*have + n].copy_from_slice(&input[at..at + n]);
                    *have += n;
                    at += n;
                    if *have == HEADER_LEN {
                        let frame = Frame::decode(bytes).map_err(|e| self.error(topo, format!("malformed frame: {:?}", e)))?;
                        self.accept(topo, inboxes, frame)?;
                    }
                }
                RxState::Payload { frame, bytes } => {
                    let n = (frame.chunk_len as usize - bytes.len()).min(input.len() - at);
                    bytes.extend_from_slice(&input[at..at + n]);
                    at += n;
                    if bytes.len() == frame.chunk_len as usize {
                        let frame = *frame;
                        let bytes = core::mem::take(bytes);
                        self.rx = RxState::Header { bytes: [0; HEADER_LEN], have: 0 };
                        inboxes.push_chunk(&frame, bytes);
                    }
                }
            }
        }
        Ok(at)
    }

    fn error(&self, topo: &Topology, what: String) -> ProtocolError {
        ProtocolError(format!("from {}: {}", topo.describe_vm(self.peer_vm), what))
    }

    /// Checks a decoded frame against the connection state and acts on it.
    fn accept(&mut self, topo: &Topology, inboxes: &mut Inboxes, frame: Frame) -> Result<(), ProtocolError> {
        self.frames_received += 1;
        self.rx = RxState::Header { bytes: [0; HEADER_LEN], have: 0 };
        if !self.hello_received {
            let expected = Frame::hello(self.peer_vm, topo.my_vm, topo.world(), topo.job);
            if frame != expected {
                return Err(self.error(topo, format!("expected hello {:?}, got {:?}", expected, frame)));
            }
            self.hello_received = true;
            return Ok(());
        }
        if frame.kind == Kind::Hello {
            return Err(self.error(topo, String::from("second hello")));
        }
        let source_vm = topo.vm_of(frame.source);
        let dest_vm = topo.vm_of(frame.dest);
        if source_vm != Some(self.peer_vm) || dest_vm != Some(topo.my_vm) {
            return Err(self.error(topo, format!("frame from rank {} to rank {} does not belong on this connection: {:?}", frame.source, frame.dest, frame)));
        }
        match frame.kind {
            Kind::Hello => Err(self.error(topo, String::from("second hello"))),
            Kind::Credit => {
                // A credit from remote `source` (receiver) for our `dest` (sender).
                let key = (frame.dest, frame.source);
                let credit = self.credit.entry(key).or_insert(topo.window);
                let granted = usize::try_from(frame.len).ok().and_then(|bytes| credit.checked_add(bytes)).filter(|&c| c <= topo.window);
                match granted {
                    Some(total) => {
                        *credit = total;
                        Ok(())
                    }
                    None => Err(self.error(topo, format!("credit of {} bytes beyond the window for rank {} → rank {}", frame.len, frame.dest, frame.source))),
                }
            }
            Kind::Message(kind) => {
                let key = (frame.source, frame.dest);
                let pair = self.rx_pairs.entry(key).or_default();
                pair.outstanding += frame.wire_len();
                if pair.outstanding > topo.window {
                    return Err(self.error(topo, format!("rank {} sent beyond its credit to rank {}", frame.source, frame.dest)));
                }
                match pair.current {
                    None => {
                        if frame.offset != 0 || frame.seq != pair.next_seq {
                            let expected = pair.next_seq;
                            return Err(self.error(topo, format!("rank {} → {}: message {} at offset {}, expected the start of message {}", frame.source, frame.dest, frame.seq, frame.offset, expected)));
                        }
                        if kind == MessageKind::SyncAck && frame.len != 0 {
                            return Err(self.error(topo, String::from("acknowledgement with a payload")));
                        }
                        pair.current = Some((frame, 0));
                    }
                    Some((first, received)) => {
                        let same = first.kind == frame.kind && first.seq == frame.seq && first.tag == frame.tag && first.context == frame.context && first.len == frame.len && first.cookie == frame.cookie;
                        if !same || frame.offset != received {
                            return Err(self.error(topo, format!("rank {} → {}: chunk {:?} does not continue message {:?} at offset {}", frame.source, frame.dest, frame, first, received)));
                        }
                    }
                }
                let received = frame.offset + u64::from(frame.chunk_len);
                if received == frame.len {
                    pair.current = None;
                    pair.next_seq = pair.next_seq.wrapping_add(1);
                } else if let Some((_, so_far)) = pair.current.as_mut() {
                    *so_far = received;
                }
                if frame.chunk_len == 0 {
                    inboxes.push_chunk(&frame, Vec::new());
                } else {
                    self.rx = RxState::Payload { frame, bytes: Vec::with_capacity(frame.chunk_len as usize) };
                }
                Ok(())
            }
        }
    }

    /// Called when our rank read `bytes` wire bytes from `sender`: the outstanding count drops.
    pub fn note_granted(&mut self, sender: u32, receiver: u32, bytes: usize) {
        if let Some(pair) = self.rx_pairs.get_mut(&(sender, receiver)) {
            pair.outstanding = pair.outstanding.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn topo(my_vm: u32) -> Topology {
        Topology { my_vm, vm_of_rank: vec![0, 0, 1, 1], job: 7, window: 4096, chunk: 1000 }
    }

    fn header(source: u32, dest: u32, len: usize) -> Header {
        Header { source, dest, tag: 5, context: 1, len, kind: MessageKind::Data, cookie: 0 }
    }

    /// Moves everything `from` can write into `to`, `step` bytes at a time.
    fn pump(from: &mut Link, from_topo: &Topology, to: &mut Link, to_topo: &Topology, inboxes: &mut Inboxes, step: usize) -> Result<usize, ProtocolError> {
        let mut total = 0;
        loop {
            let mut buffer = vec![0u8; step];
            let n = from.fill(from_topo, &mut buffer);
            if n == 0 {
                return Ok(total);
            }
            total += n;
            assert_eq!(to.absorb(to_topo, inboxes, &buffer[..n])?, n);
        }
    }

    #[test]
    fn chunks_round_robin_and_credits() {
        let (t0, t1) = (topo(0), topo(1));
        let (mut a, mut b) = (Link::new(1), Link::new(0));
        let mut inbox = Inboxes::new(2..4);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        a.queue(header(0, 2, data.len()), Payload::Owned(data.clone()), 1);
        a.queue(header(1, 3, 3), Payload::Owned(vec![1, 2, 3]), 2);
        // Odd step sizes split headers and payloads at every place.
        pump(&mut a, &t0, &mut b, &t1, &mut inbox, 37).unwrap();
        // The window (4096) stops rank 0 after 4 chunks of ≤ 1000 bytes; rank 1's message is through.
        assert!(a.completed.contains(&2) && !a.completed.contains(&1));
        let mut small = [0u8; 3];
        assert_eq!(inbox.peek(3).map(|h| h.len), Some(3));
        assert!(inbox.read_into(3, &mut small));
        assert_eq!(small, [1, 2, 3]);
        let mut big = vec![0u8; data.len()];
        assert!(!inbox.read_into(2, &mut big));
        let mut grants = Vec::new();
        inbox.take_grants(1, &mut grants);
        for (source, dest, bytes) in grants {
            b.grant(dest, source, bytes);
            b.note_granted(source, dest, bytes);
        }
        let mut back = Inboxes::new(0..2);
        for _ in 0..20 {
            pump(&mut b, &t1, &mut a, &t0, &mut back, 64).unwrap();
            pump(&mut a, &t0, &mut b, &t1, &mut inbox, 500).unwrap();
            if inbox.read_into(2, &mut big) {
                break;
            }
            let mut grants = Vec::new();
            inbox.take_grants(1, &mut grants);
            for (source, dest, bytes) in grants {
                b.grant(dest, source, bytes);
                b.note_granted(source, dest, bytes);
            }
        }
        assert_eq!(big, data);
        assert!(a.completed.contains(&1));
    }

    fn expect_error(mut edit: impl FnMut(&mut Vec<u8>), what: &str) {
        let (t0, t1) = (topo(0), topo(1));
        let (mut a, mut b) = (Link::new(1), Link::new(0));
        let mut inbox = Inboxes::new(2..4);
        a.queue(header(0, 2, 10), Payload::Owned(vec![9; 10]), 0);
        let mut bytes = vec![0u8; 4096];
        let n = a.fill(&t0, &mut bytes);
        bytes.truncate(n);
        edit(&mut bytes);
        let error = b.absorb(&t1, &mut inbox, &bytes).expect_err(what);
        assert!(error.0.contains("VM 0 (ranks 0-1)"), "{}: {}", what, error.0);
        assert!(error.0.contains(what), "{}", error.0);
    }

    fn rewrite(bytes: &mut [u8], at: usize, edit: impl FnOnce(&mut Frame)) {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&bytes[at..at + HEADER_LEN]);
        let mut frame = Frame::decode(&header).unwrap();
        edit(&mut frame);
        frame.encode(&mut header);
        bytes[at..at + HEADER_LEN].copy_from_slice(&header);
    }

    #[test]
    fn unexpected_frames_are_errors_naming_the_peer() {
        expect_error(|b| b[60] ^= 1, "malformed frame");
        expect_error(|b| rewrite(b, 0, |f| f.cookie = 8), "expected hello");
        expect_error(|b| rewrite(b, HEADER_LEN, |f| f.dest = 1), "does not belong");
        expect_error(|b| rewrite(b, HEADER_LEN, |f| f.source = 3), "does not belong");
        expect_error(|b| rewrite(b, HEADER_LEN, |f| f.dest = 99), "does not belong");
        expect_error(|b| rewrite(b, HEADER_LEN, |f| f.seq = 1), "expected the start");
        expect_error(|b| { let hello = b[..HEADER_LEN].to_vec(); b.extend_from_slice(&hello) }, "second hello");
        expect_error(
            |b| {
                let mut credit = [0u8; HEADER_LEN];
                Frame::credit(0, 2, 1).encode(&mut credit);
                b.extend_from_slice(&credit);
            },
            "beyond the window",
        );
        expect_error(
            |b| {
                // A second chunk that does not continue the first.
                rewrite(b, HEADER_LEN, |f| { f.len = 20; f.chunk_len = 10 });
                let mut next = [0u8; HEADER_LEN];
                let mut frame = Frame::message(&header(0, 2, 20), 0, 12, 8);
                frame.tag = 5;
                frame.encode(&mut next);
                b.extend_from_slice(&next);
                b.extend_from_slice(&[0; 8]);
            },
            "does not continue",
        );
        expect_error(
            |b| {
                // More than the window without credit.
                let mut more = Vec::new();
                for seq in 1..100 {
                    let mut h = [0u8; HEADER_LEN];
                    Frame::message(&header(0, 2, 10), seq, 0, 10).encode(&mut h);
                    more.extend_from_slice(&h);
                    more.extend_from_slice(&[0; 10]);
                }
                b.extend_from_slice(&more);
            },
            "beyond its credit",
        );
    }
}
