//! Per-rank matching engine: sends through the router, polls incoming messages,
//! matches them against posted receives, keeps the unexpected-message queue.
//!
//! Matching follows MPI: a message matches a receive with the same context, a source
//! equal to the receive's (or `ANY_SOURCE`) and a tag equal to the receive's (or
//! `ANY_TAG`). Receives are matched in the order they were posted and messages in
//! the order they arrived; with FIFO transports this gives MPI's non-overtaking rule.

use alloc::boxed::Box;
use alloc::collections::{BTreeSet, VecDeque};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::datatype::{validate, DatatypeRef};
pub(crate) use crate::raw::Landing;
use crate::environment::{Environment, RankSetup};
use crate::error::{fail, ErrorClass, ErrorMode, MpiError, MpiResult};
use crate::router::Router;
use crate::transport::{Header, MessageKind, SendTicket, WireRank};

/// What a receive accepts (sources are world ranks here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    pub(crate) context: u32,
    pub(crate) source: Option<WireRank>,
    pub(crate) tag: Option<i32>,
}

impl Pattern {
    fn matches(&self, header: &Header) -> bool {
        header.kind != MessageKind::SyncAck
            && header.context == self.context
            && self.source.is_none_or(|source| source == header.source)
            && self.tag.is_none_or(|tag| tag == header.tag)
    }
}

/// A message taken off a transport, with its payload.
pub(crate) struct Arrived {
    pub(crate) header: Header,
    pub(crate) payload: Vec<u8>,
}

/// A send in flight.
pub(crate) struct SendHandle {
    transport: usize,
    ticket: Option<SendTicket>,
    /// For synchronous sends: the cookie whose `SyncAck` we still wait for.
    awaiting_ack: Option<u64>,
}

/// Id of a posted immediate receive.
pub(crate) type ReceiveId = u64;

/// A message matched by a posted receive.
pub(crate) enum Matched {
    /// Already copied into the receive's `Landing`.
    InPlace(Header),
    /// Kept here: the receive's buffer was too small (TRUNCATE) or its datatype
    /// needs the bytes validated first.
    Queued(Arrived),
}

pub(crate) struct Engine {
    pub(crate) env: Box<dyn Environment>,
    router: Router,
    me: WireRank,
    world_size: u32,
    unexpected: VecDeque<Arrived>,
    posted: VecDeque<(ReceiveId, Pattern, Landing)>,
    /// Messages matched by posted receives, waiting for `wait`/`test` to complete them.
    matched: MatchedSlots,
    acked: BTreeSet<u64>,
    /// Sends nobody waits for (acks); polled to completion by `progress`.
    background: Vec<SendHandle>,
    next_id: u64,
    /// Next unused communicator id (agreed on by `communicator::new_context_id`).
    pub(crate) next_context_id: u32,
    pub(crate) error_mode: ErrorMode,
    pub(crate) last_error: Option<MpiError>,
}

impl Engine {
    pub(crate) fn new(setup: RankSetup) -> Engine {
        let me = setup.environment.world_rank();
        let locations = setup.environment.locations().to_vec();
        let router = Router::new(me, &locations, setup.routes, setup.transports);
        Engine {
            env: setup.environment,
            router,
            me,
            world_size: locations.len() as u32,
            unexpected: VecDeque::new(),
            posted: VecDeque::new(),
            matched: MatchedSlots::default(),
            acked: BTreeSet::new(),
            background: Vec::new(),
            next_id: 1,
            next_context_id: 1,
            error_mode: ErrorMode::Fatal,
            last_error: None,
        }
    }

    pub(crate) fn world_rank(&self) -> WireRank {
        self.me
    }

    pub(crate) fn world_size(&self) -> u32 {
        self.world_size
    }

    pub(crate) fn locations(&self) -> &[crate::environment::Location] {
        &self.router.locations
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ---- sending ----

    pub(crate) fn start_send(
        &mut self,
        dest: WireRank,
        context: u32,
        tag: i32,
        synchronous: bool,
        payload: &[u8],
    ) -> MpiResult<SendHandle> {
        let (kind, cookie) = if synchronous { (MessageKind::SyncData, self.fresh_id()) } else { (MessageKind::Data, 0) };
        let header = Header { source: self.me, dest, tag, context, len: payload.len(), kind, cookie };
        let mut handle = self.send_header(&header, payload)?;
        handle.awaiting_ack = synchronous.then_some(cookie);
        Ok(handle)
    }

    fn send_header(&mut self, header: &Header, payload: &[u8]) -> MpiResult<SendHandle> {
        let Some(transport) = self.router.route(header.dest) else {
            return fail(ErrorClass::Transport, format!("no transport reaches rank {}", header.dest));
        };
        match self.router.transports[transport].start_send(header, payload) {
            Ok(ticket) => Ok(SendHandle { transport, ticket: Some(ticket), awaiting_ack: None }),
            Err(error) => fail(ErrorClass::Transport, format!("sending to rank {}: {:?}", header.dest, error)),
        }
    }

    /// Whether the send is complete (polls the transport; does not make progress).
    pub(crate) fn send_finished(&mut self, handle: &mut SendHandle) -> bool {
        if let Some(ticket) = handle.ticket {
            if self.router.transports[handle.transport].send_complete(ticket) {
                handle.ticket = None;
            }
        }
        if let Some(cookie) = handle.awaiting_ack {
            if self.acked.remove(&cookie) {
                handle.awaiting_ack = None;
            }
        }
        handle.ticket.is_none() && handle.awaiting_ack.is_none()
    }

    pub(crate) fn wait_send(&mut self, mut handle: SendHandle) {
        self.block_on(|engine| engine.send_finished(&mut handle).then_some(()))
    }

    /// A matched `SyncData` is acknowledged to its sender.
    fn acknowledge(&mut self, header: &Header) -> MpiResult<()> {
        if header.kind != MessageKind::SyncData {
            return Ok(());
        }
        let ack = Header {
            source: self.me,
            dest: header.source,
            tag: 0,
            context: header.context,
            len: 0,
            kind: MessageKind::SyncAck,
            cookie: header.cookie,
        };
        let handle = self.send_header(&ack, &[])?;
        self.background.push(handle);
        Ok(())
    }

    // ---- progress ----

    /// Runs `step` until it yields a value, making progress and relaxing between tries.
    pub(crate) fn block_on<R>(&mut self, mut step: impl FnMut(&mut Engine) -> Option<R>) -> R {
        loop {
            if let Some(result) = step(self) {
                return result;
            }
            if !self.progress() {
                self.env.relax();
            }
        }
    }

    /// Polls every transport once, moving incoming messages to posted receives or the
    /// unexpected queue. Returns whether anything happened.
    pub(crate) fn progress(&mut self) -> bool {
        let mut busy = false;
        for transport in 0..self.router.transports.len() {
            if let Some(any) = self.drain(transport) {
                busy |= any;
                continue;
            }
            while let Some(header) = self.router.transports[transport].peek() {
                busy = true;
                self.take_incoming(transport, header);
            }
        }
        self.poll_background();
        busy
    }

    /// `take_incoming` for a whole batch of a transport that lends its payloads: one
    /// call, the messages placed as they come; acknowledgements are sent after it.
    /// `None` if the transport does not lend them.
    fn drain(&mut self, transport: usize) -> Option<bool> {
        let mut synchronous: Vec<Header> = Vec::new();
        let Engine { router, posted, matched, unexpected, acked, .. } = self;
        let any = router.transports[transport].drain(&mut |header, payload| {
            if header.kind == MessageKind::SyncAck {
                acked.insert(header.cookie);
                return;
            }
            let arrived = || Arrived { header: *header, payload: payload.to_vec() };
            match take_posted(posted, header) {
                Some((id, landing)) => {
                    if header.kind == MessageKind::SyncData {
                        synchronous.push(*header);
                    }
                    let placed = if lands_in_place(header.len, landing.len(), landing.datatype) {
                        // As in `take_incoming`: the receive is still posted, its buffer live.
                        copy_lent(payload, &mut landing.bytes_mut()[..header.len]);
                        Matched::InPlace(*header)
                    } else {
                        Matched::Queued(arrived())
                    };
                    matched.fill(id, placed);
                }
                None => unexpected.push_back(arrived()),
            }
        });
        for header in &synchronous {
            self.record_ack(header);
        }
        any
    }

    fn poll_background(&mut self) {
        if !self.background.is_empty() {
            let mut background = core::mem::take(&mut self.background);
            background.retain_mut(|handle| !self.send_finished(handle));
            self.background.append(&mut background);
        }
    }

    fn take_incoming(&mut self, transport: usize, header: Header) {
        if header.kind == MessageKind::SyncAck {
            self.router.transports[transport].receive_payload(&mut []);
            self.acked.insert(header.cookie);
            return;
        }
        match take_posted(&mut self.posted, &header) {
            Some((id, landing)) => {
                self.record_ack(&header);
                let matched = if lands_in_place(header.len, landing.len(), landing.datatype) {
                    // The receive is still posted (its request cannot have completed
                    // before `take_matched(id)`), so its buffer is live and ours to write.
                    let into = &mut landing.bytes_mut()[..header.len];
                    self.router.transports[transport].receive_payload(into);
                    Matched::InPlace(header)
                } else {
                    Matched::Queued(self.receive_arrived(transport, header))
                };
                self.matched.fill(id, matched);
            }
            None => {
                let arrived = self.receive_arrived(transport, header);
                self.unexpected.push_back(arrived);
            }
        }
    }

    fn receive_arrived(&mut self, transport: usize, header: Header) -> Arrived {
        let mut payload = vec![0u8; header.len];
        self.router.transports[transport].receive_payload(&mut payload);
        Arrived { header, payload }
    }

    /// Acknowledges a matched synchronous message; a failure to send the ack is
    /// reported as an error of the next call (kept simple: the sender would hang).
    fn record_ack(&mut self, header: &Header) {
        if let Err(error) = self.acknowledge(header) {
            self.last_error = Some(error);
        }
    }

    fn take_unexpected(&mut self, pattern: &Pattern) -> Option<Arrived> {
        let index = self.unexpected.iter().position(|arrived| pattern.matches(&arrived.header))?;
        let arrived = self.unexpected.remove(index)?;
        self.record_ack(&arrived.header);
        Some(arrived)
    }

    // ---- receiving ----

    /// Blocking receive straight into `destination` (bytes of a `datatype` buffer).
    /// The payload is copied from the transport into `destination` directly when the
    /// message was not queued already. A longer message is consumed and reported as
    /// `Truncate`.
    pub(crate) fn receive_into(&mut self, pattern: Pattern, destination: &mut [u8], datatype: DatatypeRef) -> MpiResult<Header> {
        loop {
            if let Some(arrived) = self.take_unexpected(&pattern) {
                return deliver(&arrived.header, &arrived.payload, destination, datatype);
            }
            let mut busy = false;
            for transport in 0..self.router.transports.len() {
                while let Some(header) = self.router.transports[transport].peek() {
                    busy = true;
                    let mine = pattern.matches(&header) && !self.posted.iter().any(|(_, posted, _)| posted.matches(&header));
                    if !mine {
                        self.take_incoming(transport, header);
                        continue;
                    }
                    self.record_ack(&header);
                    let direct = lands_in_place(header.len, destination.len(), datatype);
                    if direct {
                        self.router.transports[transport].receive_payload(&mut destination[..header.len]);
                        return Ok(header);
                    }
                    let mut payload = vec![0u8; header.len];
                    self.router.transports[transport].receive_payload(&mut payload);
                    return deliver(&header, &payload, destination, datatype);
                }
            }
            // Not `progress()`: it could move a matching message into the unexpected
            // queue behind our back (the check at the top of the loop catches that too).
            self.poll_background();
            if !busy {
                self.env.relax();
            }
        }
    }

    /// Blocking receive of a whole message, whatever its length.
    pub(crate) fn receive_message(&mut self, pattern: Pattern) -> Arrived {
        self.block_on(|engine| engine.take_unexpected(&pattern))
    }

    /// Header of the first queued message matching `pattern`, after polling once.
    pub(crate) fn probe_once(&mut self, pattern: &Pattern) -> Option<Header> {
        let found = |engine: &Engine| engine.unexpected.iter().find(|a| pattern.matches(&a.header)).map(|a| a.header);
        if let Some(header) = found(self) {
            return Some(header);
        }
        self.progress();
        found(self)
    }

    pub(crate) fn probe(&mut self, pattern: Pattern) -> Header {
        loop {
            if let Some(header) = self.probe_once(&pattern) {
                return header;
            }
            self.env.relax();
        }
    }

    /// `MPI_Mprobe`: the message is matched (removed from the queue) without a buffer.
    pub(crate) fn matched_probe(&mut self, pattern: Pattern) -> Arrived {
        self.receive_message(pattern)
    }

    /// Posts an immediate receive into `landing`; a message already queued matches at
    /// once. A message arriving later is copied straight into `landing` (see
    /// `raw::Landing` for what the caller guarantees: the buffer stays live and
    /// untouched until `take_matched(id)` has returned `Some`).
    pub(crate) fn post_receive(&mut self, pattern: Pattern, landing: Landing) -> ReceiveId {
        let id = self.matched.reserve();
        match self.take_unexpected(&pattern) {
            Some(arrived) => {
                self.matched.fill(id, Matched::Queued(arrived));
            }
            None => self.posted.push_back((id, pattern, landing)),
        }
        id
    }

    /// The message of a posted receive, if it has arrived.
    pub(crate) fn take_matched(&mut self, id: ReceiveId) -> Option<Matched> {
        if let Some(arrived) = self.matched.take(id) {
            return Some(arrived);
        }
        self.progress();
        self.matched.take(id)
    }
}

/// What posted receives matched, by receive id: the id is a slot, reserved when the
/// receive is posted and free again once its request took the message (every posted
/// receive is completed: a request's drop waits for it). A slot per receive in flight
/// keeps the message rate free of a map's insert and remove.
#[derive(Default)]
struct MatchedSlots {
    slots: Vec<Option<Matched>>,
    free: Vec<ReceiveId>,
}

impl MatchedSlots {
    fn reserve(&mut self) -> ReceiveId {
        self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            (self.slots.len() - 1) as ReceiveId
        })
    }

    fn fill(&mut self, id: ReceiveId, matched: Matched) {
        let slot = &mut self.slots[id as usize];
        debug_assert!(slot.is_none(), "receive {id} matched twice");
        *slot = Some(matched);
    }

    /// The message of receive `id`, if it matched; the slot is free again then.
    fn take(&mut self, id: ReceiveId) -> Option<Matched> {
        let matched = self.slots[id as usize].take()?;
        self.free.push(id);
        Some(matched)
    }
}

/// Copies a payload lent by a transport: with the bus's copy where it is built in (long
/// copies stream past the cache, see `intra_vbus::copy_payload`).
fn copy_lent(payload: &[u8], into: &mut [u8]) {
    #[cfg(feature = "vbus")]
    intra_vbus::copy_payload(payload, into);
    #[cfg(not(feature = "vbus"))]
    into.copy_from_slice(payload);
}

/// The first posted receive `header` matches (receives match in the order they were
/// posted), taken off the list.
#[inline(always)]
fn take_posted(posted: &mut VecDeque<(ReceiveId, Pattern, Landing)>, header: &Header) -> Option<(ReceiveId, Landing)> {
    let index = posted.iter().position(|(_, pattern, _)| pattern.matches(header))?;
    posted.remove(index).map(|(id, _, landing)| (id, landing))
}

/// Whether a matched message of `len` bytes is copied from the transport straight into
/// a receive buffer of `room` bytes: it fits, and its datatype's bytes need no validation
/// (otherwise it is kept and checked first, or reported as truncated).
#[inline(always)]
fn lands_in_place(len: usize, room: usize, datatype: DatatypeRef) -> bool {
    len <= room && !datatype.contains_bool()
}

/// Copies a payload into a receive buffer: never cuts, never writes invalid values.
pub(crate) fn deliver(header: &Header, payload: &[u8], destination: &mut [u8], datatype: DatatypeRef) -> MpiResult<Header> {
    if payload.len() > destination.len() {
        return fail(
            ErrorClass::Truncate,
            format!("message of {} bytes from rank {} (tag {}) into a buffer of {} bytes", payload.len(), header.source, header.tag, destination.len()),
        );
    }
    validate(datatype, payload)?;
    destination[..payload.len()].copy_from_slice(payload);
    Ok(*header)
}

#[cfg(test)]
mod matched_slots_tests {
    use super::*;

    fn header(tag: i32) -> Header {
        Header { source: 1, dest: 0, tag, context: 0, len: 0, kind: MessageKind::Data, cookie: 0 }
    }

    fn tag_of(matched: Option<Matched>) -> Option<i32> {
        match matched? {
            Matched::InPlace(h) => Some(h.tag),
            Matched::Queued(a) => Some(a.header.tag),
        }
    }

    #[test]
    fn a_slot_is_reused_only_after_its_message_was_taken() {
        let mut slots = MatchedSlots::default();
        let (a, b) = (slots.reserve(), slots.reserve());
        assert_ne!(a, b);
        assert_eq!(tag_of(slots.take(a)), None, "nothing matched yet: the slot stays reserved");
        assert_ne!(slots.reserve(), a, "a reserved slot is not handed out again");
        slots.fill(a, Matched::InPlace(header(10)));
        slots.fill(b, Matched::Queued(Arrived { header: header(11), payload: vec![1] }));
        assert_eq!(tag_of(slots.take(a)), Some(10));
        assert_eq!(tag_of(slots.take(a)), None, "taken once");
        let c = slots.reserve();
        assert_eq!(c, a, "a's slot is free again");
        assert_eq!(tag_of(slots.take(c)), None, "the reused slot starts empty");
        slots.fill(c, Matched::InPlace(header(12)));
        assert_eq!((tag_of(slots.take(b)), tag_of(slots.take(c))), (Some(11), Some(12)));
        assert_eq!(slots.slots.len(), 3, "three receives were ever in flight at once");
    }
}
