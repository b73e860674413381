//! One VIRTIO 1.x split virtqueue (§2.7) between two cores.
//!
//! The sending core is the *driver*: it fills a descriptor and offers it in
//! the available ring. The receiving core is the *device*: it consumes
//! descriptors in order from the available ring and gives them back, in any
//! order, through the used ring. Both indices are free-running `u16`s; the
//! ring position is `idx % queue_size` (a power of two, so wrap-around at
//! 65,536 is seamless).
//!
//! The driver makes descriptors available in ring order, as VIRTIO_F_IN_ORDER
//! asks of a driver (§2.7.13.1 note): the entry at available position `p`
//! is always descriptor `p % queue_size`, and a descriptor is reused only
//! once it came back. The device may still give descriptors back in any
//! order (the MPI layer holds one message while it passes others on), so
//! IN_ORDER as a whole is not claimed; the driver simply waits for the next
//! descriptor in ring order.
//!
//! Because the device knows which descriptor comes next, it does not read the
//! available ring on the data path: each header line ends with a *stamp*,
//! the available position of the message it holds plus one, which the driver
//! stores last. A polling device watches one cache line, the next header, and
//! finds header, stamp and up to [`INLINE_BYTES`] of payload in it: one line
//! transfer per small message instead of three dependent ones (available
//! index, available entry, header). The available ring and index are still
//! written as the spec lays them out (the device checks the entry in debug
//! builds); they are simply not on the receiver's critical path.
//!
//! Ordering (Rust/C11 memory model, not only x86-TSO):
//! - the driver writes header, eager bytes, the available entry and (for a
//!   rendezvous) the descriptor, then stores the stamp with Release, then an
//!   eager message's descriptor (the device never reads it: the payload's
//!   place follows from the id and length), then `avail.idx` with Release;
//!   the device loads the stamp with Acquire before reading what it needs
//!   (the stamp goes out as early as it can: the receiver polls it). The
//!   device reads the message, then stores `used.idx` with Release; the driver
//!   loads it with Acquire before reusing the descriptor.
//! - notification suppression is the spec's event index (VIRTIO_F_EVENT_IDX,
//!   §2.7.7/§2.7.10): the device asks for a notification by writing
//!   `avail_event` = the avail index it waits for, the driver by writing
//!   `used_event`. A publisher notifies only if its index step crossed the
//!   peer's event index (`vring_need_event`). Publishing side: store idx,
//!   `fence(SeqCst)`, load the peer's event index. Sleeping side: store own
//!   event index, `fence(SeqCst)`, re-load the idx. The two SeqCst fences
//!   order the pair (store-buffering litmus), so at least one side sees the
//!   other: the sleeper finds the new entry or the publisher sees the event
//!   index and notifies. No wake-up is lost.
//! - a polling side parks its event index half the index space (32,768)
//!   ahead of where the peer can be and moves it every 4,096 entries, so a
//!   polling peer is never notified (queue sizes are capped at 16,384 for
//!   this). Why event indices rather than the flags: they sit at the tail of
//!   the rings, on cache lines written only when a core goes to sleep, so the
//!   check after each publish is a cache hit; the flags share the line of the
//!   index the peer rewrites on every message.
//!
//! Layout: each part is one cache-line-aligned allocation, so the
//! driver-written parts (descriptors, headers, avail, eager buffers) and the
//! device-written part (used) never share a line. The avail and used rings are
//! the spec's arrays of little-endian 16-bit words (flags, idx, ring, event);
//! a used element `{le32 id, le32 len}` is four words with `len` always 0
//! (our buffers are device-read-only). Each descriptor has a fixed header
//! slot and eager buffer of its own, like the per-buffer header of virtio-net.

use alloc::boxed::Box;
use core::alloc::Layout;
use core::ptr::NonNull;

use crate::header::Header;
use crate::sync::{AtomicU16, Ordering, SharedCell};

// Word offsets inside the available and used rings. The flags words stay 0:
// with the event index negotiated the spec ignores them.
const IDX: usize = 1;
const RING: usize = 2;
/// Words per used element `{le32 id, le32 len}`.
const USED_ELEM_WORDS: usize = 4;

/// At most this many lines of the next eager buffer are fetched ahead for
/// writing (see [`Virtq::prefetch_for_write`]); longer copies cost more than
/// the fetch of their lines.
const PREFETCH_LINES_MAX: usize = 4;

/// How far ahead of the peer a polling side parks its event index.
const PARKED: u16 = 0x8000;
/// A polling side moves its parked event index every this many entries.
const REPARK_EVERY: u16 = 4096;

/// §2.7.10 `vring_need_event`: did moving the index from `old` to `new`
/// pass `event`?
#[inline(always)]
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A split-virtqueue descriptor (§2.7.5). `flags` and `next` stay 0: a
/// message is never chained, its header lives in the descriptor's header slot.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Desc {
    /// Eager: the descriptor's ring buffer. Rendezvous: the sender's buffer.
    pub(crate) addr: u64,
    /// Payload bytes (saturated at `u32::MAX`; the header's `len` is exact).
    pub(crate) len: u32,
    pub(crate) flags: u16,
    pub(crate) next: u16,
}

/// Payload bytes that travel in the header's own cache line (see [`HeaderLine`]):
/// what is left of 64 bytes after the 40-byte header and the 2-byte stamp,
/// rounded down to keep the stamp aligned.
pub(crate) const INLINE_BYTES: usize = 20;

/// One descriptor's header, alone in its cache line, with eager payloads of at
/// most [`INLINE_BYTES`] and the stamp that publishes them (see the module
/// docs): a small message costs the receiver one line transfer.
#[repr(C, align(64))]
pub(crate) struct HeaderLine {
    header: SharedCell<Header>,
    inline: SharedCell<[u8; INLINE_BYTES]>,
    /// Available position of the message in this line, plus one (0: never used).
    stamp: AtomicU16,
}

impl HeaderLine {
    fn new() -> Self {
        HeaderLine {
            header: SharedCell::new(Header::EMPTY),
            inline: SharedCell::new([0; INLINE_BYTES]),
            stamp: AtomicU16::new(0),
        }
    }
}

/// The stamp of the message at available position `p`.
#[inline(always)]
fn stamp_of(p: u16) -> u16 {
    p.wrapping_add(1)
}

#[repr(C, align(64))]
struct WordLine([AtomicU16; 32]);

/// A contiguous, cache-line-aligned array of 16-bit words accessed atomically
/// (Relaxed for ring entries, which are ordered by the idx word).
struct Words(Box<[WordLine]>);

impl Words {
    fn new(words: usize, initial: impl Fn(usize) -> u16) -> Self {
        let lines = words.div_ceil(32);
        Words(
            (0..lines)
                .map(|l| WordLine(core::array::from_fn(|k| AtomicU16::new(initial(l * 32 + k)))))
                .collect(),
        )
    }

    #[inline(always)]
    fn at(&self, i: usize) -> &AtomicU16 {
        &self.0[i / 32].0[i % 32]
    }
}

/// The eager buffers of one ring: raw, zeroed, cache-line-aligned memory.
struct EagerBuffers {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: EagerBuffers is plain memory owned by its Virtq; who may touch which
// byte when is decided by the ring protocol (see Virtq's Sync impl).
unsafe impl Send for EagerBuffers {}
// SAFETY: as above.
unsafe impl Sync for EagerBuffers {}

impl EagerBuffers {
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes, 64).expect("eager buffers too large");
        if bytes == 0 {
            return EagerBuffers { base: NonNull::<[u8; 64]>::dangling().cast(), layout };
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout));
        EagerBuffers { base, layout }
    }
}

impl Drop for EagerBuffers {
    fn drop(&mut self) {
        if self.layout.size() != 0 {
            // SAFETY: allocated in `new` with this very layout, freed only here.
            unsafe { alloc::alloc::dealloc(self.base.as_ptr(), self.layout) };
        }
    }
}

/// What a publish did.
pub(crate) struct Published {
    pub(crate) id: u16,
    /// The descriptor's generation; it changes when the descriptor comes back.
    pub(crate) generation: u32,
    /// The available index before this publish, for
    /// [`avail_needs_notify`](Virtq::avail_needs_notify).
    pub(crate) old: u16,
}

/// Driver-side state of one descriptor.
#[derive(Clone, Copy, Debug, Default)]
struct DescState {
    /// How many times it came back. A send is complete when its descriptor's
    /// generation moved on.
    generation: u32,
    /// Made available and not yet seen back in the used ring.
    in_flight: bool,
    /// Carries a rendezvous (someone polls for its return).
    rendezvous: bool,
}

/// The states of eight descriptors in a cache line of their own.
#[repr(align(64))]
#[derive(Clone, Copy, Debug, Default)]
struct DescStateLine([DescState; DESC_STATES_PER_LINE]);

const DESC_STATES_PER_LINE: usize = 8;
const _: () = assert!(size_of::<DescState>() * DESC_STATES_PER_LINE == 64);
// `Config::private_ring_bytes` and the crate docs' memory formula count one line each.
const _: () = assert!(size_of::<DriverState>() == 64 && size_of::<DeviceState>() == 64);

/// Driver-side bookkeeping, private to the sending core. It is written on
/// every send, so it lives in cache lines of its own (the struct and its
/// per-descriptor states): the endpoints of all cores are often allocated
/// side by side by one core, and a line shared with another core's state
/// would cross between the cores on every message.
#[repr(align(64))]
#[derive(Debug)]
pub(crate) struct DriverState {
    states: Box<[DescStateLine]>,
    queue_size: u16,
    next_avail: u16,
    last_used: u16,
    rendezvous_in_flight: usize,
}

impl DriverState {
    pub(crate) fn new(queue_size: u16) -> Self {
        let lines = (queue_size as usize).div_ceil(DESC_STATES_PER_LINE);
        DriverState {
            states: alloc::vec![DescStateLine::default(); lines].into_boxed_slice(),
            queue_size,
            next_avail: 0,
            last_used: 0,
            rendezvous_in_flight: 0,
        }
    }

    #[inline(always)]
    fn state(&self, i: usize) -> &DescState {
        &self.states[i / DESC_STATES_PER_LINE].0[i % DESC_STATES_PER_LINE]
    }

    #[inline(always)]
    fn state_mut(&mut self, i: usize) -> &mut DescState {
        &mut self.states[i / DESC_STATES_PER_LINE].0[i % DESC_STATES_PER_LINE]
    }

    /// Whether anyone can be waiting for this ring's used entries: a
    /// rendezvous send to complete, or the next descriptor in ring order
    /// (ring full). Returned eager descriptors alone wake nobody.
    pub(crate) fn watch_used(&self) -> bool {
        self.rendezvous_in_flight > 0 || self.next_in_flight()
    }

    /// The descriptor the next publish uses is still in flight (as far as
    /// this side has reclaimed).
    fn next_in_flight(&self) -> bool {
        let size = self.queue_size as usize;
        size != 0 && self.state(self.next_avail as usize & (size - 1)).in_flight
    }

    pub(crate) fn generation(&self, id: u16) -> u32 {
        self.state(id as usize).generation
    }
}

/// Device-side bookkeeping, private to the receiving core, in a cache line of
/// its own (as [`DriverState`]).
#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct DeviceState {
    last_avail: u16,
    /// Where the next used entry goes.
    next_used: u16,
    /// The used index the driver can see: entries up to `next_used` are
    /// written but not yet published.
    published_used: u16,
    /// The used index before the last published batch (for
    /// [`Virtq::used_needs_notify`]).
    batch_from: u16,
}

/// One ring: shared memory of one ordered core pair.
pub(crate) struct Virtq {
    size: u16,
    desc: Box<[SharedCell<Desc>]>,
    headers: Box<[HeaderLine]>,
    avail: Words,
    used: Words,
    eager: EagerBuffers,
    slot_bytes: usize,
}

// SAFETY: the cells and eager buffers are only touched through the methods
// below, whose contracts make one core the driver and one the device, and
// hand every descriptor's memory from one to the other with Release/Acquire
// on the ring indices (see the module docs). The remaining fields are atomics
// or immutable.
unsafe impl Sync for Virtq {}

impl Virtq {
    pub(crate) fn new(size: u16, slot_bytes: usize) -> Self {
        debug_assert!(size.is_power_of_two() && slot_bytes.is_multiple_of(64));
        let q = size as usize;
        Virtq {
            size,
            desc: (0..q).map(|_| SharedCell::new(Desc::default())).collect(),
            headers: (0..q).map(|_| HeaderLine::new()).collect(),
            // Both sides start polling: event indices parked.
            avail: Words::new(RING + q + 1, |i| if i == RING + q { PARKED } else { 0 }),
            used: Words::new(RING + USED_ELEM_WORDS * q + 1, |i| {
                if i == RING + USED_ELEM_WORDS * q { PARKED } else { 0 }
            }),
            eager: EagerBuffers::new(q * slot_bytes),
            slot_bytes,
        }
    }

    #[inline(always)]
    fn pos(&self, idx: u16) -> usize {
        (idx & (self.size - 1)) as usize
    }

    /// `used_event`: written by the driver, after the avail ring entries.
    #[inline(always)]
    fn used_event(&self) -> &AtomicU16 {
        self.avail.at(RING + self.size as usize)
    }

    /// `avail_event`: written by the device, after the used ring entries.
    #[inline(always)]
    fn avail_event(&self) -> &AtomicU16 {
        self.used.at(RING + USED_ELEM_WORDS * self.size as usize)
    }

    /// Where the eager payload of `len` bytes of descriptor `id` lives: the
    /// header line's spare bytes when it fits there, else the eager buffer.
    #[inline(always)]
    pub(crate) fn eager_payload(&self, id: u16, len: usize) -> *mut u8 {
        if len <= INLINE_BYTES {
            self.headers[id as usize].inline.with_mut(|p| p.cast::<u8>())
        } else {
            self.slot(id)
        }
    }

    /// Hints the CPU to fetch the first `lines` lines of descriptor `id`'s
    /// eager buffer for writing, so that the next publish, if its payload goes
    /// there, does not stall on taking the lines back from the receiver's cache
    /// (stores leave in order: the stamp waits for every line before it). Not
    /// the header line: a polling receiver is watching it, and taking it early
    /// would only bounce it between the cores. (Prefetching header lines
    /// further ahead, for writing or, on the receiver, for reading, changed
    /// neither latency nor message rate measurably: `pingpong --rate`.)
    #[inline(always)]
    fn prefetch_for_write(&self, id: u16, lines: usize) {
        let slot = self.slot(id);
        for line in 0..lines {
            prefetchw(slot.wrapping_add(line * 64));
        }
    }

    /// Hints the CPU to fetch, for writing, the header line the next publish on
    /// this ring will use, if that descriptor is free. A receiver calls it for
    /// the ring back to the core a message came from: if it answers, the line
    /// is already on its way while it takes the message in, so the answer's
    /// stamp does not wait for a whole line transfer (ping-pong 8 B one-way
    /// with near vCPUs: host threads 57–61 → 50–52 ns, `pingpong --latency`; in
    /// a VM 58–60 → 51–53 ns, `vbus-test`).
    #[inline(always)]
    pub(crate) fn prefetch_next_header(&self, st: &DriverState) {
        if !st.next_in_flight() {
            prefetchw(&self.headers[self.pos(st.next_avail)]);
        }
    }

    /// The eager buffer of descriptor `id`.
    #[inline(always)]
    pub(crate) fn slot(&self, id: u16) -> *mut u8 {
        assert!(id < self.size);
        // `wrapping_add` keeps this safe; the offset is in bounds since id < size.
        self.eager.base.as_ptr().wrapping_add(id as usize * self.slot_bytes)
    }

    // ----- driver side -------------------------------------------------

    /// Offers one message. Eager payloads (at most the slot size) are copied
    /// now; otherwise the descriptor points at `payload`. Returns `None` when
    /// every descriptor is in flight (back-pressure).
    ///
    /// # Safety
    /// The caller is this ring's only driver and `st` its state. For a
    /// rendezvous header, `payload` stays valid and unwritten until the
    /// descriptor's generation moves on.
    #[inline]
    pub(crate) unsafe fn publish(
        &self,
        st: &mut DriverState,
        header: &Header,
        payload: &[u8],
    ) -> Option<Published> {
        if st.next_in_flight() {
            // SAFETY: forwarded from our caller.
            unsafe { self.reclaim(st) };
            if st.next_in_flight() {
                return None;
            }
        }
        let old = st.next_avail;
        let i = self.pos(old);
        let id = i as u16;
        let rendezvous = header.protocol == crate::Protocol::Rendezvous;
        let desc = if rendezvous {
            Desc {
                addr: payload.as_ptr().expose_provenance() as u64,
                len: payload.len().min(u32::MAX as usize) as u32,
                flags: 0,
                next: 0,
            }
        } else {
            assert!(payload.len() <= self.slot_bytes, "eager payload larger than its slot");
            let slot = self.eager_payload(id, payload.len());
            // SAFETY: descriptor `id` is not in flight: the device gave it
            // back (its used entry was Acquire-loaded in reclaim) and no
            // longer reads its slot or header line, so we own them;
            // `payload` is a live shared slice, so it cannot be this memory.
            unsafe { copy_small(payload.as_ptr(), slot, payload.len()) };
            Desc { addr: slot as u64, len: payload.len() as u32, flags: 0, next: 0 }
        };
        if rendezvous {
            // The device reads a rendezvous descriptor: it goes out with the stamp.
            // SAFETY: descriptor `id` is ours until published (see above): the
            // device reads these cells only after acquiring the stamp below.
            self.desc[i].with_mut(|p| unsafe { p.write(desc) });
        }
        // SAFETY: as above.
        self.headers[i].header.with_mut(|p| unsafe { p.write(*header) });
        self.avail.at(RING + i).store(id, Ordering::Relaxed);
        self.headers[i].stamp.store(stamp_of(old), Ordering::Release);
        // The message is out; what follows is off the receiver's critical path.
        if !rendezvous {
            // An eager descriptor is written for the spec's layout (the device
            // takes the payload from the header line or the slot, never reads it),
            // before the available index that a spec device would read.
            // SAFETY: as above; the device never reads an eager descriptor.
            self.desc[i].with_mut(|p| unsafe { p.write(desc) });
        }
        let state = st.state_mut(i);
        state.in_flight = true;
        state.rendezvous = rendezvous;
        st.rendezvous_in_flight += rendezvous as usize;
        st.next_avail = old.wrapping_add(1);
        self.avail.at(IDX).store(st.next_avail, Ordering::Release);
        // The next message is likely the size of this one (a loop sending the
        // same buffer): as many lines as its payload took in the eager buffer,
        // up to PREFETCH_LINES_MAX. Even if the receiver may still hold the next
        // descriptor: skipping those (as far as this side knows, reclaiming
        // lazily, nearly always) lost the gain, and a stream gained as well
        // (`pingpong --rate`, 128 / 256 B: 42.6–45.4 / 35.4–37.6 against
        // 39.8–40.8 / 34.3–34.9 M messages/s with one line).
        let in_buffer = !rendezvous && payload.len() > INLINE_BYTES;
        let lines = if in_buffer { payload.len().div_ceil(64).min(PREFETCH_LINES_MAX) } else { 1 };
        self.prefetch_for_write(self.pos(st.next_avail) as u16, lines.min(self.slot_bytes / 64));
        Some(Published { id, generation: st.state(i).generation, old })
    }

    /// After a [`publish`](Self::publish) that returned `old` and a `SeqCst`
    /// fence (the store-buffering pair with the device's `arm_device`):
    /// whether the device asked to be notified of what was published since
    /// `old` (it is about to sleep, or asleep). The caller may do other work
    /// between publish and fence: the fence then rarely waits for the line
    /// the stamp went to, which the polling receiver had to give up.
    #[inline]
    pub(crate) fn avail_needs_notify(&self, st: &DriverState, old: u16) -> bool {
        need_event(self.avail_event().load(Ordering::Relaxed), st.next_avail, old)
    }

    /// Takes back every descriptor the device has returned; true if any.
    ///
    /// # Safety
    /// The caller is this ring's only driver and `st` its state.
    pub(crate) unsafe fn reclaim(&self, st: &mut DriverState) -> bool {
        let used_idx = self.used.at(IDX).load(Ordering::Acquire);
        let any = used_idx != st.last_used;
        while st.last_used != used_idx {
            let word = RING + USED_ELEM_WORDS * self.pos(st.last_used);
            let id = self.used.at(word).load(Ordering::Relaxed);
            assert!(id < self.size, "corrupt used ring");
            let i = id as usize;
            let state = st.state_mut(i);
            assert!(state.in_flight, "descriptor returned twice");
            state.in_flight = false;
            state.generation = state.generation.wrapping_add(1);
            let rendezvous = state.rendezvous;
            st.rendezvous_in_flight -= rendezvous as usize;
            st.last_used = st.last_used.wrapping_add(1);
            if st.last_used.is_multiple_of(REPARK_EVERY) {
                self.used_event().store(st.last_used.wrapping_add(PARKED), Ordering::Relaxed);
            }
        }
        any
    }

    /// Reclaims once half the descriptors are out, so that a steady stream
    /// of sends (the caller calls this after each) finds the next
    /// descriptor free instead of reclaiming in front of its publish.
    ///
    /// # Safety
    /// As for [`reclaim`](Self::reclaim).
    #[inline]
    pub(crate) unsafe fn reclaim_if_half_out(&self, st: &mut DriverState) {
        if st.next_avail.wrapping_sub(st.last_used) >= self.size / 2 {
            // SAFETY: forwarded from our caller.
            unsafe { self.reclaim(st) };
        }
    }

    /// Whether the device has returned descriptors not yet reclaimed.
    pub(crate) fn has_used(&self, st: &DriverState) -> bool {
        self.used.at(IDX).load(Ordering::Acquire) != st.last_used
    }

    /// Driver about to sleep: notify me at the next used entry. The caller
    /// then fences and re-checks [`has_used`](Self::has_used).
    ///
    /// # Safety
    /// The caller is this ring's only driver and `st` its state.
    pub(crate) unsafe fn arm_driver(&self, st: &DriverState) {
        self.used_event().store(st.last_used, Ordering::Relaxed);
    }

    /// Driver polling again: park `used_event` out of the device's reach.
    ///
    /// # Safety
    /// As for [`arm_driver`](Self::arm_driver).
    pub(crate) unsafe fn disarm_driver(&self, st: &DriverState) {
        self.used_event().store(st.last_used.wrapping_add(PARKED), Ordering::Relaxed);
    }

    // ----- device side -------------------------------------------------

    /// The next offered descriptor, left in the ring: in ring order, published
    /// once its header line carries the stamp of this position.
    #[inline(always)]
    pub(crate) fn peek(&self, st: &DeviceState) -> Option<u16> {
        let i = self.pos(st.last_avail);
        if self.headers[i].stamp.load(Ordering::Acquire) != stamp_of(st.last_avail) {
            return None;
        }
        debug_assert_eq!(self.avail.at(RING + i).load(Ordering::Relaxed), i as u16, "available ring out of order");
        Some(i as u16)
    }

    /// Moves past the descriptor `peek` returned: it is now the device's until
    /// given back.
    #[inline]
    pub(crate) fn consume(&self, st: &mut DeviceState) {
        st.last_avail = st.last_avail.wrapping_add(1);
        if st.last_avail.is_multiple_of(REPARK_EVERY) {
            self.avail_event().store(st.last_avail.wrapping_add(PARKED), Ordering::Relaxed);
        }
    }

    /// # Safety
    /// The caller is this ring's only device and holds descriptor `id` (from
    /// `peek`, not yet given back).
    pub(crate) unsafe fn header(&self, id: u16) -> Header {
        // SAFETY: the driver wrote it before the Release store of the stamp
        // we Acquire-loaded in peek, and rewrites it only after we give the
        // descriptor back.
        self.headers[id as usize].header.with(|p| unsafe { p.read() })
    }

    /// # Safety
    /// As for [`Virtq::header`].
    pub(crate) unsafe fn desc(&self, id: u16) -> Desc {
        // SAFETY: as in `header`.
        self.desc[id as usize].with(|p| unsafe { p.read() })
    }

    /// Writes the used entry returning descriptor `id`, not yet visible to the
    /// driver: [`publish_used`](Self::publish_used) makes every entry written
    /// since the last publish visible at once, with one index store and one
    /// fence for the batch.
    ///
    /// # Safety
    /// The caller is this ring's only device, `st` its state, holds `id` and
    /// touches neither its slot nor its payload afterwards.
    #[inline]
    pub(crate) unsafe fn give_back_unpublished(&self, st: &mut DeviceState, id: u16) {
        let word = RING + USED_ELEM_WORDS * self.pos(st.next_used);
        self.used.at(word).store(id, Ordering::Relaxed);
        st.next_used = st.next_used.wrapping_add(1);
    }

    /// Publishes the used entries written since the last publish (at least
    /// one). The caller fences (`SeqCst`) after its last publish and before
    /// asking [`used_needs_notify`](Self::used_needs_notify).
    ///
    /// # Safety
    /// As for [`give_back_unpublished`](Self::give_back_unpublished).
    #[inline]
    pub(crate) unsafe fn publish_used(&self, st: &mut DeviceState) {
        debug_assert_ne!(st.published_used, st.next_used, "nothing to publish");
        self.used.at(IDX).store(st.next_used, Ordering::Release);
        st.batch_from = st.published_used;
        st.published_used = st.next_used;
    }

    /// After [`publish_used`](Self::publish_used) and a `SeqCst` fence (the
    /// store-buffering pair with the driver's `arm_driver`): whether the
    /// driver asked to be notified of an entry in that batch.
    #[inline]
    pub(crate) fn used_needs_notify(&self, st: &DeviceState) -> bool {
        need_event(self.used_event().load(Ordering::Relaxed), st.next_used, st.batch_from)
    }

    /// Device about to sleep: notify me at the next available entry. The
    /// caller then fences and re-checks [`peek`](Self::peek).
    ///
    /// # Safety
    /// The caller is this ring's only device and `st` its state.
    pub(crate) unsafe fn arm_device(&self, st: &DeviceState) {
        self.avail_event().store(st.last_avail, Ordering::Relaxed);
    }

    /// Device polling again: park `avail_event` out of the driver's reach.
    ///
    /// # Safety
    /// As for [`arm_device`](Self::arm_device).
    pub(crate) unsafe fn disarm_device(&self, st: &DeviceState) {
        self.avail_event().store(st.last_avail.wrapping_add(PARKED), Ordering::Relaxed);
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn avail_idx(&self) -> u16 {
        self.avail.at(IDX).load(Ordering::Relaxed)
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn used_idx(&self) -> u16 {
        self.used.at(IDX).load(Ordering::Relaxed)
    }
}

/// Hints the CPU to fetch the line at `at` for writing (a no-op where there is no
/// `prefetchw`, and under Miri and loom).
#[inline(always)]
fn prefetchw<T>(at: *const T) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    // SAFETY: `prefetchw` only hints the cache; it never faults, whatever the
    // address, and changes no memory (a no-op on CPUs without it).
    unsafe {
        core::arch::asm!("prefetchw [{0}]", in(reg) at, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
    let _ = at;
}

/// `copy_nonoverlapping` for the eager path, with the sizes of MPI's small
/// messages (1–32 bytes: envelopes, barriers, 1–4 doubles) done in registers:
/// a call to `memcpy` costs more than the copy there. Each size class moves a
/// head and a tail that overlap in the middle.
///
/// # Safety
/// As for [`core::ptr::copy_nonoverlapping`].
#[inline(always)]
pub(crate) unsafe fn copy_small(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract; each branch reads and writes inside
    // `src[..len]` and `dst[..len]`: a head and a tail of the branch's word
    // size, both within `len` since `len` is at least that size.
    unsafe {
        match len {
            0 => {}
            1..=3 => {
                let (a, m, b) = (src.read(), src.add(len / 2).read(), src.add(len - 1).read());
                dst.write(a);
                dst.add(len / 2).write(m);
                dst.add(len - 1).write(b);
            }
            4..=7 => {
                let (a, b) = (src.cast::<u32>().read_unaligned(), src.add(len - 4).cast::<u32>().read_unaligned());
                dst.cast::<u32>().write_unaligned(a);
                dst.add(len - 4).cast::<u32>().write_unaligned(b);
            }
            8..=16 => {
                let (a, b) = (src.cast::<u64>().read_unaligned(), src.add(len - 8).cast::<u64>().read_unaligned());
                dst.cast::<u64>().write_unaligned(a);
                dst.add(len - 8).cast::<u64>().write_unaligned(b);
            }
            17..=32 => {
                let (a, b) = (src.cast::<u128>().read_unaligned(), src.add(len - 16).cast::<u128>().read_unaligned());
                dst.cast::<u128>().write_unaligned(a);
                dst.add(len - 16).cast::<u128>().write_unaligned(b);
            }
            _ => core::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}
