//! One core's view of the bus: sends to other cores, receives from them, and
//! waits for either without losing a wake-up.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;

use crate::bus::{Bus, Notify};
use crate::header::{Envelope, Header, Protocol};
use crate::sync::{fence, spin_hint, Ordering};
use crate::virtq::{DeviceState, DriverState, Virtq};
use crate::CoreId;

/// Why a send did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Every descriptor of the ring to that core is in flight: poll
    /// ([`Endpoint::test`], [`Endpoint::wait_for_work`]) and try again.
    /// Nothing was sent; nothing is ever dropped.
    WouldBlock,
    /// The destination core is not below `config.cores`.
    NoSuchCore,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::WouldBlock => "ring full, try again",
            SendError::NoSuchCore => "no such core on this bus",
        })
    }
}

/// A started send; poll it with [`Endpoint::test`]. Eager and same-core sends
/// are complete at once; a rendezvous send completes when the receiver has
/// copied the payload and given the descriptor back.
#[derive(Debug)]
#[must_use = "a rendezvous send's buffer stays borrowed until the handle tests complete"]
pub struct SendHandle {
    pending: Option<PendingSend>,
}

#[derive(Debug, Clone, Copy)]
struct PendingSend {
    from: CoreId,
    to: CoreId,
    id: u16,
    generation: u32,
}

impl SendHandle {
    const COMPLETE: SendHandle = SendHandle { pending: None };

    /// True if the send was complete when it started (eager or same-core): the
    /// buffer is free at once and [`Endpoint::test`] need not be asked.
    pub fn is_complete(&self) -> bool {
        self.pending.is_none()
    }
}

/// A received message, taken off its ring but not yet given back.
///
/// Read it with [`payload`](Incoming::payload), then hand it to
/// [`Endpoint::release`]. Until then the sender's descriptor stays in flight:
/// for rendezvous its send stays incomplete, and a ring whose descriptors are
/// all held reports [`SendError::WouldBlock`] to its sender. Dropping an
/// `Incoming` without releasing it leaks the descriptor for good.
///
/// Two words: the header and payload stay where they arrived (the ring's
/// header line, its buffer, the sender's buffer) and are read from there, so
/// taking a message moves nothing and the handle travels in registers. (As a
/// copy of the header with its pointers, 88 bytes moved through the stack,
/// the 8 B one-way between host threads was 1–2 ns longer.)
///
/// It may move to another thread (it is `Send` and `Sync`: it only reads a
/// descriptor it owns); it must still be released on this core's endpoint.
#[must_use = "release the message, or its descriptor never returns to the sender"]
pub struct Incoming<'bus> {
    held: Held<'bus>,
}

enum Held<'bus> {
    /// Descriptor `id` of the ring from core `src`, ours until released.
    Ring { ring: &'bus Virtq, src: u16, id: u16 },
    /// A message between two ranks of core `core`.
    Local { message: Box<LocalMessage>, core: u16 },
}

impl fmt::Debug for Incoming<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("header", &self.header())
            .field("src_core", &self.src_core())
            .finish_non_exhaustive()
    }
}

impl<'bus> Incoming<'bus> {
    /// What the MPI layer matches on.
    #[inline]
    pub fn header(&self) -> Header {
        match &self.held {
            Held::Ring { ring, id, .. } => {
                // SAFETY: the descriptor is ours until `release` consumes `self`
                // (see `payload`), and the sender wrote its header before the
                // stamp we acquired when taking it.
                unsafe { ring.header(*id) }
            }
            Held::Local { message, .. } => message.header,
        }
    }

    /// The core it came from.
    #[inline]
    pub fn src_core(&self) -> CoreId {
        match self.held {
            Held::Ring { src, .. } => src as CoreId,
            Held::Local { core, .. } => core as CoreId,
        }
    }

    /// Payload length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.header().len as usize
    }

    /// True for a zero-length (control) message.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload, read in place: the ring buffer (eager) or the sender's own
    /// buffer (rendezvous). Copying it out is the one copy of a rendezvous.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.held {
            Held::Local { message, .. } => &message.data,
            Held::Ring { ring, id, .. } => {
                // SAFETY: descriptor `id` is ours until `release` consumes `self`
                // (its header and descriptor were published with Release and
                // read after our Acquire of the stamp).
                let header = unsafe { ring.header(*id) };
                let len = header.len as usize;
                let start = match header.protocol {
                    Protocol::Eager => ring.eager_payload(*id, len).cast_const(),
                    Protocol::Rendezvous => {
                        // SAFETY: as above. The address was exposed by the sender
                        // (`expose_provenance`) when it published the descriptor.
                        let desc = unsafe { ring.desc(*id) };
                        core::ptr::with_exposed_provenance(desc.addr as usize)
                    }
                };
                // SAFETY: the sender leaves this memory alone while we hold the
                // descriptor: an eager slot is reused only after it is given
                // back, and a rendezvous buffer must stay valid and unwritten
                // until then (the contract of `try_isend`).
                unsafe { core::slice::from_raw_parts(start, len) }
            }
        }
    }
}

struct LocalMessage {
    header: Header,
    data: Vec<u8>,
}

/// Core `core`'s end of the bus: the private half of the `cores−1` rings it
/// sends on and the `cores−1` rings it receives on, plus a local queue for
/// messages between ranks of the same core.
///
/// Exactly one exists per core ([`Bus::endpoint`]); ranks sharing a core
/// (cooperative threads) share it.
pub struct Endpoint<'bus, N: Notify> {
    bus: &'bus Bus<N>,
    core: CoreId,
    /// Ring `core → dst`, by `dst` (`None` at the own index): looked up once,
    /// not on every send.
    tx_rings: Box<[Option<&'bus Virtq>]>,
    /// Ring `src → core`, by `src` (`None` at the own index).
    rx_rings: Box<[Option<&'bus Virtq>]>,
    /// Driver state of ring `core → dst`, by `dst` (own index unused).
    tx: Box<[DriverState]>,
    /// Device state of ring `src → core`, by `src` (own index unused).
    rx: Box<[DeviceState]>,
    /// Messages between ranks of this core: no ring, no other core involved.
    local: VecDeque<Box<LocalMessage>>,
    /// Released local messages, reused by the next local sends: a steady
    /// exchange between ranks of one core allocates nothing. (Boxed: the box
    /// is what an `Incoming` holds.)
    #[allow(clippy::vec_box)]
    local_free: Vec<Box<LocalMessage>>,
    /// Where the next `poll` starts, so every source gets its turn.
    next_source: CoreId,
    /// Between `prepare_wait` and `finish_wait`.
    waiting: bool,
    /// Outgoing rings whose used-buffer notifications we armed to sleep.
    armed_tx: u64,
    /// Released eager descriptors not yet given back, as (source core, id):
    /// see [`release`](Self::release).
    deferred: [(CoreId, u16); DEFER_MAX],
    /// Give back once this many are held: [`DEFER_MAX`], or the queue size
    /// if smaller (a ring's descriptors are never all held).
    defer_limit: usize,
    deferred_len: usize,
}

/// At most this many released eager descriptors wait to be given back.
const DEFER_MAX: usize = 8;

/// Released local messages kept for reuse, at most this many (a window of
/// osu_bw's sends)…
const LOCAL_FREE_MAX: usize = 64;
/// …and only those whose buffer holds at most this many bytes (at most
/// 256 KiB kept per core).
const LOCAL_KEEP_BYTES: usize = 4 << 10;

impl<N: Notify> fmt::Debug for Endpoint<'_, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").field("core", &self.core).finish_non_exhaustive()
    }
}

impl<'bus, N: Notify> Endpoint<'bus, N> {
    pub(crate) fn new(bus: &'bus Bus<N>, core: CoreId) -> Self {
        let config = bus.config();
        let q = |peer| if peer == core { 0 } else { config.queue_size };
        Endpoint {
            bus,
            core,
            tx_rings: (0..config.cores).map(|dst| (dst != core).then(|| bus.ring(core, dst))).collect(),
            rx_rings: (0..config.cores).map(|src| (src != core).then(|| bus.ring(src, core))).collect(),
            tx: (0..config.cores).map(|dst| DriverState::new(q(dst))).collect(),
            rx: (0..config.cores).map(|_| DeviceState::default()).collect(),
            local: VecDeque::new(),
            local_free: Vec::new(),
            next_source: 0,
            waiting: false,
            armed_tx: 0,
            deferred: [(0, 0); DEFER_MAX],
            defer_limit: DEFER_MAX.min(config.queue_size as usize),
            deferred_len: 0,
        }
    }

    /// The core this endpoint belongs to.
    pub fn core(&self) -> CoreId {
        self.core
    }

    /// The bus this endpoint belongs to.
    pub fn bus(&self) -> &'bus Bus<N> {
        self.bus
    }

    fn cores(&self) -> CoreId {
        self.tx_rings.len()
    }

    /// The ring this core sends to `dst` on (`dst` another core).
    #[inline(always)]
    fn tx_ring(&self, dst: CoreId) -> &'bus Virtq {
        self.tx_rings[dst].expect("no ring to the own core")
    }

    /// The ring this core receives from `src` on (`src` another core).
    #[inline(always)]
    fn rx_ring(&self, src: CoreId) -> &'bus Virtq {
        self.rx_rings[src].expect("no ring from the own core")
    }

    // ----- sending ------------------------------------------------------

    /// Starts sending `data` to core `to` without blocking.
    ///
    /// At most `eager_max` bytes: copied into the ring now, complete at once.
    /// Longer: the descriptor points at `data`, the receiver copies straight
    /// from it, and the send completes when [`test`](Self::test) says so.
    /// To the own core: copied into the local queue, complete at once.
    /// A full ring returns [`SendError::WouldBlock`] and sends nothing.
    ///
    /// # Safety
    /// If the send is a rendezvous (`data.len() > eager_max`, other core),
    /// `data` must stay valid and must not be written until `test` on the
    /// returned handle has returned true; forgetting the handle therefore
    /// means never freeing or writing `data` again. [`send`](Self::send) is
    /// the safe, blocking form.
    #[inline]
    pub unsafe fn try_isend(
        &mut self,
        to: CoreId,
        env: Envelope,
        data: &[u8],
    ) -> Result<SendHandle, SendError> {
        if to >= self.cores() {
            return Err(SendError::NoSuchCore);
        }
        let eager = data.len() <= self.bus.config().eager_max;
        let header = Header {
            env,
            len: data.len() as u64,
            protocol: if eager { Protocol::Eager } else { Protocol::Rendezvous },
        };
        if to == self.core {
            self.give_back_deferred();
            let message = match self.local_free.pop() {
                Some(mut message) => {
                    message.header = header;
                    message.data.clear();
                    message.data.extend_from_slice(data);
                    message
                }
                None => Box::new(LocalMessage { header, data: data.to_vec() }),
            };
            self.local.push_back(message);
            if self.waiting {
                // Another rank of this core is about to sleep on it.
                self.bus.notifier().notify(self.core);
            }
            return Ok(SendHandle::COMPLETE);
        }
        let ring = self.tx_ring(to);
        // SAFETY: this endpoint is the only one of its core, so the only
        // driver of ring core→to, and tx[to] is that ring's driver state; the
        // rendezvous buffer contract is our caller's.
        let published = unsafe { ring.publish(&mut self.tx[to], &header, data) };
        let Some(published) = published else {
            self.give_back_deferred();
            return Err(SendError::WouldBlock);
        };
        // The message is out: now, off the receiver's critical path, the
        // bookkeeping a send would otherwise do before it, then the fence
        // that orders the publish before reading the receiver's event index
        // (shared with the give-backs' fence).
        // SAFETY: as above.
        unsafe { ring.reclaim_if_half_out(&mut self.tx[to]) };
        self.give_back_deferred_fenced();
        if ring.avail_needs_notify(&self.tx[to], published.old) {
            self.bus.notifier().notify(to);
        }
        Ok(if eager {
            SendHandle::COMPLETE
        } else {
            SendHandle {
                pending: Some(PendingSend {
                    from: self.core,
                    to,
                    id: published.id,
                    generation: published.generation,
                }),
            }
        })
    }

    /// Whether the send behind `handle` is complete (its buffer may be reused).
    pub fn test(&mut self, handle: &SendHandle) -> bool {
        self.give_back_deferred();
        let Some(p) = handle.pending else { return true };
        assert_eq!(p.from, self.core, "send handle of another endpoint");
        let ring = self.tx_ring(p.to);
        // SAFETY: this endpoint is ring core→to's only driver (see try_isend).
        unsafe { ring.reclaim(&mut self.tx[p.to]) };
        self.tx[p.to].generation(p.id) != p.generation
    }

    /// Blocks until the send behind `handle` is complete. Does not receive:
    /// the peer must be receiving for a rendezvous to complete.
    pub fn wait_send(&mut self, handle: SendHandle) {
        while !self.test(&handle) {
            self.wait_for_work();
        }
    }

    /// Sends `data` to core `to` and returns once the send is complete,
    /// waiting for ring space first. Does not receive meanwhile: two cores
    /// sending rendezvous messages to each other this way deadlock, exactly
    /// like two blocking MPI_Ssend; use `try_isend` plus a progress loop there.
    pub fn send(&mut self, to: CoreId, env: Envelope, data: &[u8]) -> Result<(), SendError> {
        let handle = loop {
            // SAFETY: `data` is borrowed for this whole call and we return
            // only once the send is complete; if waiting unwinds, the guard
            // below aborts instead of letting the receiver read freed memory.
            match unsafe { self.try_isend(to, env, data) } {
                Ok(handle) => break handle,
                Err(SendError::WouldBlock) => self.wait_for_work(),
                Err(e) => return Err(e),
            }
        };
        if handle.is_complete() {
            return Ok(());
        }
        let guard = AbortOnUnwind;
        self.wait_send(handle);
        core::mem::forget(guard);
        Ok(())
    }

    // ----- receiving ----------------------------------------------------

    /// The header of the next message from core `src`, leaving the message
    /// queued (it stays at the head of that core's FIFO).
    pub fn peek_from(&self, src: CoreId) -> Option<Header> {
        if src == self.core {
            return self.local.front().map(|m| m.header);
        }
        let ring = self.rx_ring(src);
        let id = ring.peek(&self.rx[src])?;
        // SAFETY: this endpoint is ring src→core's only device and `id` is
        // the descriptor at its head, not yet consumed nor given back.
        Some(unsafe { ring.header(id) })
    }

    /// Takes the next message from core `src`, if any (FIFO per core pair).
    #[inline]
    pub fn poll_from(&mut self, src: CoreId) -> Option<Incoming<'bus>> {
        self.take_from(src)
    }

    /// The next message from core `src`, if any.
    #[inline(always)]
    fn take_from(&mut self, src: CoreId) -> Option<Incoming<'bus>> {
        if src >= self.cores() {
            return None;
        }
        if src == self.core {
            let message = self.local.pop_front()?;
            return Some(Incoming { held: Held::Local { message, core: src as u16 } });
        }
        let ring = self.rx_ring(src);
        let id = ring.peek(&self.rx[src])?;
        ring.consume(&mut self.rx[src]);
        if ring.peek(&self.rx[src]).is_none() {
            // `src` sent nothing more, as when it waits for an answer: the answer
            // would go back on the ring to `src`, so start taking its line now. (Not
            // in a stream: there it only takes the line from a core about to poll it.)
            self.tx_ring(src).prefetch_next_header(&self.tx[src]);
        }
        Some(Incoming { held: Held::Ring { ring, src: src as u16, id } })
    }

    /// Takes the next message from any core, taking turns between sources.
    #[inline(always)]
    pub fn poll(&mut self) -> Option<Incoming<'bus>> {
        // Sources in turn from `next_source`, wrapping without a division
        // (this loop is on every receive's path).
        let n = self.cores();
        let mut src = self.next_source;
        for _ in 0..n {
            let next = if src + 1 == n { 0 } else { src + 1 };
            if let Some(m) = self.take_from(src) {
                self.next_source = next;
                return Some(m);
            }
            src = next;
        }
        None
    }

    /// Blocks until a message arrives and takes it.
    #[inline]
    pub fn recv(&mut self) -> Incoming<'bus> {
        // Spin on `poll` itself: the message is taken the moment its line
        // arrives, not after a separate look for work. (Spinning on the
        // stamps alone and polling after measured no faster.) One call site,
        // so that `poll` inlines here and the message stays in registers.
        let mut polls = 0;
        loop {
            if let Some(m) = self.poll() {
                return m;
            }
            if polls < self.bus.config().spin_polls {
                polls += 1;
                spin_hint();
            } else {
                polls = 0;
                self.sleep_until_work();
            }
        }
    }

    /// Gives a received message back: its descriptor returns to the sender
    /// (completing a rendezvous send). Messages may be released in any order.
    ///
    /// An eager descriptor goes back at this endpoint's next send, test,
    /// wait or drop, in one batch with the others released meanwhile, or
    /// once [`DEFER_MAX`] (at most the queue size) are held: a receiver that
    /// answers a message gives back after its answer is out, so the
    /// give-back's fence is not on the round trip, and a receiver draining a
    /// stream pays one index store and one fence per batch instead of one per
    /// message. Nobody waits for one eager descriptor: a sender waits only
    /// for a rendezvous descriptor, given back here at once (with the batch
    /// held so far), or for a full
    /// ring, and fewer are held than a ring has, so the receiver polling on
    /// takes the others and reaches the batch size.
    #[inline]
    pub fn release(&mut self, msg: Incoming<'bus>) {
        let (ring, src, id) = match msg.held {
            Held::Ring { ring, src, id } => (ring, src as CoreId, id),
            Held::Local { message, core } => {
                // A local message carries no bus: one of another bus's endpoint
                // for the same core index passes, and is only recycled here.
                assert!(core as CoreId == self.core, "message of another endpoint");
                if self.local_free.len() < LOCAL_FREE_MAX && message.data.capacity() <= LOCAL_KEEP_BYTES {
                    self.local_free.push(message);
                }
                return;
            }
        };
        // The ring identifies bus, source and destination at once.
        assert!(
            self.rx_rings.get(src).copied().flatten().is_some_and(|mine| core::ptr::eq(mine, ring)),
            "message of another endpoint"
        );
        // SAFETY: descriptor `id` is still ours: `release` is what gives it up.
        let rendezvous = unsafe { ring.header(id) }.protocol == Protocol::Rendezvous;
        self.deferred[self.deferred_len] = (src, id);
        self.deferred_len += 1;
        if rendezvous || self.deferred_len == self.defer_limit {
            self.give_back_deferred_fenced();
        }
    }

    /// Gives back every released descriptor still held: the used entries of
    /// each ring, then one index store per ring and one fence for them all.
    #[inline]
    fn give_back_deferred(&mut self) {
        if self.deferred_len != 0 {
            self.give_back_deferred_fenced();
        }
    }

    /// [`give_back_deferred`](Self::give_back_deferred), with its `SeqCst`
    /// fence even if nothing was held (a send's publish needs one).
    fn give_back_deferred_fenced(&mut self) {
        let n = core::mem::take(&mut self.deferred_len);
        let mut sources = 0u64;
        for &(src, id) in &self.deferred[..n] {
            // SAFETY: this endpoint is ring src→core's only device; the message
            // that held descriptor `id` was consumed by `release`, so its payload
            // can no longer be read.
            unsafe { self.rx_ring(src).give_back_unpublished(&mut self.rx[src], id) };
            sources |= 1 << src;
        }
        for src in BitIter(sources) {
            // SAFETY: as above; `src` had an entry written just now.
            unsafe { self.rx_ring(src).publish_used(&mut self.rx[src]) };
        }
        // Store-buffering pair with the drivers' `arm_driver` (and, for a
        // send, the device's `arm_device`).
        fence(Ordering::SeqCst);
        for src in BitIter(sources) {
            if self.rx_ring(src).used_needs_notify(&self.rx[src]) {
                self.bus.notifier().notify(src);
            }
        }
    }

    /// Copies the payload into the front of `dst` and releases the message;
    /// returns the length. If `dst` is too short nothing is copied and the
    /// message comes back untouched (never truncated).
    #[inline]
    pub fn receive_into(
        &mut self,
        msg: Incoming<'bus>,
        dst: &mut [u8],
    ) -> Result<usize, Incoming<'bus>> {
        let payload = msg.payload();
        let len = payload.len();
        if dst.len() < len {
            return Err(msg);
        }
        crate::copy::copy_payload(payload, dst);
        self.release(msg);
        Ok(len)
    }

    // ----- waiting ------------------------------------------------------

    /// Whether anything happened that a waiter on this core cares about: a
    /// message to take, or descriptors returned on a ring we send on where
    /// that matters (a rendezvous in flight, or the ring full).
    pub fn has_work(&self) -> bool {
        if !self.local.is_empty() {
            return true;
        }
        (0..self.cores()).filter(|&peer| peer != self.core).any(|peer| {
            self.rx_ring(peer).peek(&self.rx[peer]).is_some()
                || (self.tx[peer].watch_used()
                    && self.tx_ring(peer).has_used(&self.tx[peer]))
        })
    }

    /// Announces that this core is about to sleep, then re-checks. Returns
    /// true if the caller may now sleep ([`Notify::wait`] or the runtime's own
    /// wait): any message or returned descriptor arriving from now on notifies
    /// this core. Returns false (and undoes the announcement) if work is
    /// already there. Call [`finish_wait`](Self::finish_wait) after waking.
    pub fn prepare_wait(&mut self) -> bool {
        self.give_back_deferred();
        self.waiting = true;
        let mut reclaimed = false;
        for peer in (0..self.cores()).filter(|&peer| peer != self.core) {
            let rx_ring = self.rx_ring(peer);
            // SAFETY: this endpoint is ring peer→core's only device.
            unsafe { rx_ring.arm_device(&self.rx[peer]) };
            if self.tx[peer].watch_used() {
                let tx_ring = self.tx_ring(peer);
                // SAFETY: this endpoint is ring core→peer's only driver.
                // Reclaim first, so the event index we arm is the device's
                // next used entry, not one already returned.
                unsafe {
                    reclaimed |= tx_ring.reclaim(&mut self.tx[peer]);
                    tx_ring.arm_driver(&self.tx[peer]);
                }
                self.armed_tx |= 1 << peer;
            }
        }
        // Store-buffering pair with the fence after a send and after a batch
        // of give-backs (`give_back_deferred_fenced`).
        fence(Ordering::SeqCst);
        // A reclaim above may have completed what the caller waits for.
        if reclaimed || self.has_work() {
            self.finish_wait();
            return false;
        }
        true
    }

    /// Back to polling: peers stop notifying this core.
    pub fn finish_wait(&mut self) {
        if !self.waiting {
            return;
        }
        self.waiting = false;
        for peer in (0..self.cores()).filter(|&peer| peer != self.core) {
            // SAFETY: this endpoint is ring peer→core's only device.
            unsafe { self.rx_ring(peer).disarm_device(&self.rx[peer]) };
            if self.armed_tx & (1 << peer) != 0 {
                // SAFETY: this endpoint is ring core→peer's only driver.
                unsafe { self.tx_ring(peer).disarm_driver(&self.tx[peer]) };
            }
        }
        self.armed_tx = 0;
    }

    /// Spins up to `config.spin_polls` polls, then sleeps through
    /// [`Notify::wait`] until there may be work. May return without work
    /// (spurious wake): callers loop.
    pub fn wait_for_work(&mut self) {
        // Whoever waits may be what the peers wait for: a sender needs its
        // next descriptor back in ring order.
        self.give_back_deferred();
        for _ in 0..self.bus.config().spin_polls {
            if self.has_work() {
                return;
            }
            spin_hint();
        }
        self.sleep_until_work();
    }

    /// Sleeps through [`Notify::wait`] unless work is already there.
    fn sleep_until_work(&mut self) {
        if self.prepare_wait() {
            self.bus.notifier().wait(self.core);
            self.finish_wait();
        }
    }
}

impl<N: Notify> Drop for Endpoint<'_, N> {
    /// Released descriptors go back to their senders, even if this core
    /// never calls the bus again.
    fn drop(&mut self) {
        self.give_back_deferred();
    }
}

/// The set bits of a mask, lowest first.
struct BitIter(u64);

impl Iterator for BitIter {
    type Item = CoreId;

    #[inline]
    fn next(&mut self) -> Option<CoreId> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros() as CoreId;
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

/// Turns an unwind into an abort (a panic while panicking aborts): used where
/// unwinding would free a buffer another core may still read.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        panic!("unwinding out of a rendezvous send whose buffer may still be read");
    }
}
