//! MPI over intra-vbus (feature `vbus`): the `Transport` of ranks that share a VM.
//!
//! One [`VbusNet`] per VM holds the bus and, per core, that core's endpoint plus an
//! inbox per rank. Several ranks may share a core (cooperative rank threads in the
//! VM, std threads in host tests): they share the core's endpoint under a lock that
//! is held for a few ring operations and never across a wait (in the VM a flag set
//! with plain stores, see `CoreLock`). Each rank owns a
//! [`VbusPort`] (its `Transport`) and a [`RankWaiter`] (what its `Environment::relax`
//! calls).
//!
//! Receiving: a rank first drains its inbox (messages other ranks of its core took
//! off the rings for it), then polls the endpoint. A message for itself stays on the
//! ring until the MPI layer copies its payload straight into the destination buffer
//! (rendezvous: the one and only copy), in one `Transport::drain` call per batch from
//! the progress loop, or `peek` + `receive_payload` for a blocking receive; a message for another rank of the core is
//! copied into that rank's inbox and released at once, so no ring is ever held up
//! by a rank that is not running. FIFO per rank pair holds: ring order, then inbox
//! order, and a rank always empties its inbox before it polls again.
//!
//! Header mapping: the ring envelope carries source, destination, tag and kind as
//! they are; `comm` = context (low 32 bits) | low 32 bits of the sync cookie (high
//! 32 bits). A `SyncAck` gets its full cookie back from the sender's table of
//! outstanding synchronous sends.
//!
//! Waiting ([`RankWaiter::relax`]): spin (yielding to the other rank threads of the
//! core) for `spin_ns`, then arm the endpoint (`prepare_wait`), and block through
//! [`Notify::wait`] — the core runs its other ranks, or halts. Whoever disarms the
//! endpoint wakes the other waiters of its core, so they re-arm: a rank never sleeps
//! on a disarmed endpoint. `relax` yields to the core's other ranks between the
//! caller's last look at what it waits for and the block; they share the endpoint,
//! and another rank's `test`, send or `prepare_wait` takes returned descriptors back
//! from the rings for all of them — a completed rendezvous send, a freed ring slot —
//! without any notify, while `prepare_wait` re-checks only what is still on the rings
//! (messages for other ranks land in their inboxes, which the block re-checks). So
//! every such call counts in the core's `reclaims`, and a rank that sees the count
//! moved during its yield returns to look again instead of blocking. Without that it
//! slept through its own completed send, for good once nothing else came to its core
//! (`tests::a_completion_taken_back_by_another_rank_of_the_core_is_not_slept_on`).
//! Not yielding before the block would close the window too, but then a rank alone on
//! its core (host tests: an OS thread per rank) parks before its peer had a chance to
//! answer: the host reduction test ran 3–70× slower. [`RankWaiter::relax_with`] arms a second
//! [`WakeSource`] (the network of a job spanning VMs) after the endpoint and blocks
//! through [`Machine::wait_until`] with its deadline. A non-blocking call that found nothing
//! (`test`, `immediate_probe`) only yields ([`RankWaiter::yield_now`]): a rank polling
//! in a loop must let the other ranks of its core run, one of them may be the rank it
//! waits for.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicBool, Ordering};

use intra_vbus::{Bus, Config, ConfigError, CoreId, Endpoint, Envelope, Incoming, Notify, SendError, SendHandle};
use spin::Mutex;

use crate::collective::shm::Arena;
use crate::transport::{Header, MessageKind, SendTicket, Transport, TransportError, WireRank};

/// What the adapter needs from the machine besides the bus's `Notify`.
pub trait Machine: Notify + Send + 'static {
    /// True if every thread that uses the MPI layer runs pinned to its rank's core and
    /// the threads of a core switch only inside `yield_now` and the waits (a cooperative
    /// scheduler): a core's state is then only ever touched by one thread at a time on
    /// that core, and its lock needs no locked instruction (see `CoreLock`).
    const COOPERATIVE_CORES: bool = false;
    /// Lets the other ready threads of the calling core run (returns at once if none).
    fn yield_now(&self);
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;
    /// Wakes every thread waiting on `core`, without leaving a wake-up token.
    fn wake_all(&self, core: CoreId) {
        self.notify(core);
    }
    /// `Notify::wait`, returning by `deadline_ns` (`now_ns` clock) at the latest; the
    /// machine may then halt the core until an interrupt (see [`WakeSource`]).
    fn wait_until(&self, core: CoreId, _deadline_ns: u64) {
        self.wait(core);
    }
}

/// A second thing a blocking rank waits for besides its core's rings: the network,
/// in a job that spans VMs. It wakes the rank with the machine's `notify` (or an
/// interrupt the machine turns into a wake-up).
pub trait WakeSource {
    /// The rank is about to block (its endpoint is armed): announce it, then
    /// re-check. `None`: something is pending, look again instead of blocking.
    /// `Some(deadline_ns)`: block, until then at the latest.
    fn arm(&self) -> Option<u64>;
    /// The rank woke up (or did not block); called after every `arm`.
    fn disarm(&self);
}

/// Messages of one core: its endpoint and an inbox per rank living there.
struct CoreNet<M: Machine> {
    endpoint: Endpoint<'static, M>,
    /// Messages for the ranks of this core that another rank took off a ring.
    inboxes: BTreeMap<WireRank, VecDeque<(Header, Vec<u8>)>>,
    /// Messages in all the inboxes: while 0 (one rank per core, always) a fetch skips
    /// the map.
    inboxed: usize,
    /// Counts the endpoint calls that may take returned descriptors back from the
    /// rings (`test`, sends, `prepare_wait`; all through `reclaiming`): a rank that
    /// yielded before blocking compares it with what it saw before the yield (see the
    /// module docs).
    reclaims: u64,
}

impl<M: Machine> CoreNet<M> {
    /// Copies a message taken off a ring into the inbox of its rank (`header.dest`)
    /// and releases it, so no ring waits for a rank that is not running. Inlined
    /// always: as an ordinary call it measured 6 ns slower on the 8 B latency (the
    /// receive loop around it compiled differently); inlined, the 8 B latency in a VM
    /// was 0.086–0.090 µs against 0.095–0.097 with the copy written out three times
    /// (quick osu image, 5 interleaved runs).
    #[inline(always)]
    fn move_to_inbox(&mut self, header: Header, message: Incoming<'static>) {
        let data = message.payload().to_vec();
        self.endpoint.release(message);
        self.inboxes.entry(header.dest).or_default().push_back((header, data));
        self.inboxed += 1;
    }

    fn pop_inbox(&mut self, rank: WireRank) -> Option<(Header, Vec<u8>)> {
        if self.inboxed == 0 {
            return None;
        }
        let message = self.inboxes.get_mut(&rank)?.pop_front()?;
        self.inboxed -= 1;
        Some(message)
    }

    fn inbox_is_empty(&self, rank: WireRank) -> bool {
        self.inboxed == 0 || self.inboxes.get(&rank).is_none_or(VecDeque::is_empty)
    }

    /// The endpoint, for a call that may take returned descriptors back from the rings
    /// (`test`, `try_isend`, `prepare_wait`): counted in `reclaims`.
    fn reclaiming(&mut self) -> &mut Endpoint<'static, M> {
        self.reclaims += 1;
        &mut self.endpoint
    }
}

/// One core's state in cache lines of its own: the ranks of different cores lock
/// and write their own core's state on every call, and a line shared with the
/// neighbour's would cross between the cores each time.
#[repr(align(128))]
struct CoreSlot<M: Machine>(CoreLock<CoreNet<M>>);

impl<M: Machine> core::ops::Deref for CoreSlot<M> {
    type Target = CoreLock<CoreNet<M>>;
    fn deref(&self) -> &CoreLock<CoreNet<M>> {
        &self.0
    }
}

/// The lock of one core's state. Taken on every send and receive, so on a machine with
/// cooperative cores (`Machine::COOPERATIVE_CORES`) it is a flag set and cleared with
/// plain stores: a `lock cmpxchg` drains the store buffer, which holds the last message's
/// stamp, and cost a tenth of the small-message rate. Elsewhere (host threads as ranks)
/// it spins on a compare-and-swap. Never held across a yield or a wait; a second lock on
/// a cooperative core would mean it was, and panics.
struct CoreLock<T> {
    held: AtomicBool,
    cooperative: bool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a guard, and a guard exists only while
// `held` is set by its `lock`: on cooperative cores one thread at a time runs on the
// core and all users of the lock run there (`Machine::COOPERATIVE_CORES`), elsewhere
// the compare-and-swap makes `held` exclusive. T: Send, as the value moves between the
// threads that lock it.
unsafe impl<T: Send> Sync for CoreLock<T> {}

impl<T> CoreLock<T> {
    fn new(value: T, cooperative: bool) -> Self {
        CoreLock { held: AtomicBool::new(false), cooperative, value: UnsafeCell::new(value) }
    }

    #[inline]
    fn lock(&self) -> CoreGuard<'_, T> {
        if self.cooperative {
            assert!(!self.held.load(Ordering::Acquire), "a core's MPI state locked twice: held across a thread switch");
            self.held.store(true, Ordering::Relaxed);
        } else {
            while self.held.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
                core::hint::spin_loop();
            }
        }
        CoreGuard { lock: self }
    }
}

struct CoreGuard<'a, T> {
    lock: &'a CoreLock<T>,
}

impl<T> core::ops::Deref for CoreGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock (see `CoreLock`'s Sync impl).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for CoreGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for CoreGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.held.store(false, Ordering::Release);
    }
}

/// Shared memory of small collectives, by (collective context, world ranks).
type Arenas = BTreeMap<(u32, Vec<WireRank>), Arc<Arena>>;

/// The bus of one VM and every core's shared state. Build it once, share it (`Arc`)
/// between the ranks.
pub struct VbusNet<M: Machine> {
    /// Field order matters: the endpoints (which borrow the bus) drop first.
    cores: Vec<CoreSlot<M>>,
    arenas: Mutex<Arenas>,
    bus: *mut Bus<M>,
    spin_ns: u64,
}

// SAFETY: `bus` is an owned box (freed only in Drop, after every endpoint); the bus
// itself is Sync (its rings are SPSC with atomics) and M: Send; everything else is
// behind the per-core mutexes.
unsafe impl<M: Machine> Send for VbusNet<M> {}
// SAFETY: as above: shared access goes through `&Bus` (Sync) or the mutexes.
unsafe impl<M: Machine> Sync for VbusNet<M> {}

impl<M: Machine> VbusNet<M> {
    /// Builds the bus for `config.cores` cores and takes every core's endpoint.
    /// A waiting rank spins `spin_ns` before it blocks.
    pub fn new(config: Config, machine: M, spin_ns: u64) -> Result<VbusNet<M>, ConfigError> {
        let bus: &'static Bus<M> = Box::leak(Box::new(Bus::new(config, machine)?));
        let cores = (0..config.cores)
            .map(|core| {
                let endpoint = bus.endpoint(core).expect("a fresh bus has every endpoint");
                CoreSlot(CoreLock::new(
                    CoreNet { endpoint, inboxes: BTreeMap::new(), inboxed: 0, reclaims: 0 },
                    M::COOPERATIVE_CORES,
                ))
            })
            .collect();
        Ok(VbusNet { cores, arenas: Mutex::new(BTreeMap::new()), bus: bus as *const Bus<M> as *mut Bus<M>, spin_ns })
    }

    fn bus(&self) -> &Bus<M> {
        // SAFETY: the box lives until Drop.
        unsafe { &*self.bus }
    }

    /// The machine given to `new`.
    pub fn machine(&self) -> &M {
        self.bus().notifier()
    }

    /// Number of cores of the bus.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The collective arena of communicator context `context` with members `group`
    /// (world ranks, all in this VM): created by the first member that asks, then the
    /// same for every member (`Environment::collective_arena`).
    pub fn collective_arena(&self, context: u32, group: &[WireRank]) -> Arc<Arena> {
        self.arenas.lock().entry((context, group.to_vec())).or_insert_with(|| Arc::new(Arena::new(group.len()))).clone()
    }
}

impl<M: Machine> Drop for VbusNet<M> {
    fn drop(&mut self) {
        // Endpoints borrow the bus: drop them first. No `Incoming` outlives this:
        // ports hold an Arc of the net and drop their held message before it.
        self.cores.clear();
        // SAFETY: `bus` came from Box::leak in `new`, nothing borrows it any more
        // (endpoints gone, ports gone since we are the last Arc).
        drop(unsafe { Box::from_raw(self.bus) });
    }
}

/// Where each world rank lives: `Some(core)` in this VM, `None` elsewhere.
pub type CoreMap = Vec<Option<CoreId>>;

/// The waiting side of one rank, shared by its port and its environment.
pub struct RankWaiter<M: Machine> {
    net: Arc<VbusNet<M>>,
    rank: WireRank,
    core: CoreId,
    /// When the current wait started (0: not waiting).
    idle_since: Cell<u64>,
    /// The port holds a message for this rank (peeked, not consumed).
    holding: Cell<bool>,
}

impl<M: Machine> RankWaiter<M> {
    /// Something happened for this rank: its next wait starts with the spin budget.
    pub fn busy(&self) {
        self.idle_since.set(0);
    }

    /// Lets the other ready rank threads of this core run (a non-blocking MPI call
    /// found nothing done); returns at once if none is ready. Never blocks.
    pub fn yield_now(&self) {
        self.net.machine().yield_now();
    }

    /// The bus of this rank's VM.
    pub fn net(&self) -> &Arc<VbusNet<M>> {
        &self.net
    }

    /// Blocks until this core is notified: a ring arrival for it, or a rank that
    /// changed what this rank waits for (`Environment::wake`). Returns at once if a
    /// message is already waiting. Unlike `relax` it neither spins nor yields before
    /// the thread is on the core's wait list, so a wake-up sent after the caller's last
    /// check cannot be taken by another rank of the core in between.
    pub fn block(&self) {
        self.block_with(None)
    }

    /// `block`, on `also` too: the rank blocks only if both its endpoint and `also` are
    /// armed, until either wakes it (or `also`'s deadline).
    pub fn block_with(&self, also: Option<&dyn WakeSource>) {
        self.block_unless(also, None);
    }

    /// `block_with`, unless another rank of the core called the endpoint since it
    /// read `reclaims_seen` (then return: the caller looks again).
    fn block_unless(&self, also: Option<&dyn WakeSource>, reclaims_seen: Option<u64>) {
        if self.holding.get() {
            return;
        }
        let machine = self.net.machine();
        let mut core = self.net.cores[self.core].lock();
        if !core.inbox_is_empty(self.rank) {
            return;
        }
        if reclaims_seen.is_some_and(|seen| seen != core.reclaims) {
            return;
        }
        if core.reclaiming().prepare_wait() {
            drop(core);
            match also {
                None => machine.wait(self.core),
                Some(source) => {
                    if let Some(deadline) = source.arm() {
                        machine.wait_until(self.core, deadline);
                    }
                    source.disarm();
                }
            }
            core = self.net.cores[self.core].lock();
            core.endpoint.finish_wait();
        }
        drop(core);
        // The endpoint is disarmed now: the other waiters of this core re-check and re-arm.
        machine.wake_all(self.core);
    }

    /// Waits a little for something to happen (see the module docs); always returns.
    pub fn relax(&self) {
        self.relax_with(None)
    }

    /// `relax`, blocking on `also` too (`block_with`) once the spin budget is spent.
    pub fn relax_with(&self, also: Option<&dyn WakeSource>) {
        let machine = self.net.machine();
        let now = machine.now_ns().max(1);
        if self.idle_since.get() == 0 {
            self.idle_since.set(now);
        }
        if now - self.idle_since.get() < self.net.spin_ns || self.holding.get() {
            // No `pause` here: on this Zen 5 it takes 23 ns, and the caller's round
            // (its queues, every transport, the clock) already spaces its polls of
            // the rings by more than that (MPI 8 B latency in a VM 0.087–0.093 µs
            // with it, 0.079–0.082 without). The bus's own spin keeps its `pause`:
            // polling the line the peer is about to write any faster takes the line
            // away from the writer (vbus-test 8 B one-way 47–48 ns with, 57–59 without).
            machine.yield_now();
            return;
        }
        // The caller looked at what it waits for just now; the other ranks of the core
        // run in the yield and may take its completion off the rings (module docs):
        // then it must look again rather than block.
        let seen = self.net.cores[self.core].lock().reclaims;
        machine.yield_now();
        self.block_unless(also, Some(seen));
    }
}

enum Held {
    Ring(Incoming<'static>),
    Copied(Vec<u8>),
}

/// The ticket of a send that completed when it started (tickets of pending sends count from 1).
const COMPLETE_TICKET: u64 = 0;

/// One rank's `Transport` over the bus.
pub struct VbusPort<M: Machine> {
    /// The message `peek` returned, until `receive_payload` (drops before `waiter`).
    peeked: Option<(Header, Held)>,
    sends: BTreeMap<u64, SendHandle>,
    next_ticket: u64,
    /// Outstanding synchronous sends: low 32 bits of the cookie → cookie.
    sync_cookies: BTreeMap<u32, u64>,
    core_of: Rc<CoreMap>,
    waiter: Rc<RankWaiter<M>>,
}

/// Builds the port and the waiter of rank `rank` (living on `core_of[rank]`).
pub fn rank_port<M: Machine>(net: Arc<VbusNet<M>>, rank: WireRank, core_of: Rc<CoreMap>) -> (VbusPort<M>, Rc<RankWaiter<M>>) {
    let core = core_of[rank as usize].expect("the rank lives in this VM");
    assert!(core < net.cores(), "rank {rank} on core {core}: the bus has {} cores", net.cores());
    net.cores[core].lock().inboxes.entry(rank).or_default();
    let waiter = Rc::new(RankWaiter { net, rank, core, idle_since: Cell::new(0), holding: Cell::new(false) });
    let port = VbusPort {
        peeked: None,
        sends: BTreeMap::new(),
        next_ticket: 1,
        sync_cookies: BTreeMap::new(),
        core_of,
        waiter: waiter.clone(),
    };
    (port, waiter)
}

fn envelope_of(header: &Header) -> Envelope {
    Envelope {
        src_rank: header.source,
        dst_rank: header.dest,
        tag: header.tag,
        comm: header.context as u64 | ((header.cookie as u32 as u64) << 32),
        kind: header.kind as u8,
    }
}

fn header_of(h: intra_vbus::Header) -> Header {
    let kind = match h.env.kind {
        1 => MessageKind::SyncData,
        2 => MessageKind::SyncAck,
        _ => MessageKind::Data,
    };
    Header {
        source: h.env.src_rank,
        dest: h.env.dst_rank,
        tag: h.env.tag,
        context: h.env.comm as u32,
        len: h.len as usize,
        kind,
        cookie: h.env.comm >> 32,
    }
}

impl<M: Machine> VbusPort<M> {
    fn net(&self) -> &VbusNet<M> {
        &self.waiter.net
    }

    /// A taken `SyncAck` carries the whole cookie of the synchronous send it acknowledges
    /// (the wire has its low 32 bits), which is no longer outstanding.
    fn settle_sync_ack(&mut self, header: &mut Header) {
        if header.kind == MessageKind::SyncAck {
            if let Some(cookie) = self.sync_cookies.remove(&(header.cookie as u32)) {
                header.cookie = cookie;
            }
        }
    }

    /// Takes the next message for this rank off its inbox or the rings; messages for
    /// the other ranks of the core go to their inboxes. With `copy_all`, a message
    /// for this rank is copied out and released too (frees ring descriptors).
    fn fetch(&mut self) {
        let me = self.waiter.rank;
        let net = &self.waiter.net;
        let mut core = net.cores[self.waiter.core].lock();
        if let Some((header, data)) = core.pop_inbox(me) {
            self.peeked = Some((header, Held::Copied(data)));
            return;
        }
        let mut delivered_to_others = false;
        while let Some(message) = core.endpoint.poll() {
            let header = header_of(message.header());
            if header.dest == me {
                self.peeked = Some((header, Held::Ring(message)));
                break;
            }
            core.move_to_inbox(header, message);
            delivered_to_others = true;
        }
        drop(core);
        if delivered_to_others {
            net.machine().wake_all(self.waiter.core);
        }
    }

    /// Moves everything waiting on the rings of this core into inboxes (this rank's
    /// included), so the peers' descriptors come back while we wait for ring space.
    fn drain_rings(&mut self) {
        let net = &self.waiter.net;
        let mut core = net.cores[self.waiter.core].lock();
        let mut any = false;
        while let Some(message) = core.endpoint.poll() {
            core.move_to_inbox(header_of(message.header()), message);
            any = true;
        }
        drop(core);
        if any {
            net.machine().wake_all(self.waiter.core);
        }
    }
}

impl<M: Machine> Transport for VbusPort<M> {
    fn start_send(&mut self, header: &Header, payload: &[u8]) -> Result<SendTicket, TransportError> {
        let to = self.core_of.get(header.dest as usize).copied().flatten().ok_or(TransportError::Unreachable)?;
        let envelope = envelope_of(header);
        if header.kind == MessageKind::SyncData {
            self.sync_cookies.insert(header.cookie as u32, header.cookie);
        }
        let handle = loop {
            let result = {
                let mut core = self.net().cores[self.waiter.core].lock();
                // SAFETY: the MPI layer keeps `payload` alive and unwritten until
                // `send_complete` returned true for the ticket (Transport contract);
                // we say true only once `test` on this handle did, and a port dropped
                // with sends in flight waits for them first (`Drop for VbusPort`).
                unsafe { core.reclaiming().try_isend(to, envelope, payload) }
            };
            match result {
                Ok(handle) => break handle,
                Err(SendError::WouldBlock) => {
                    // The ring to `to` is full: give back what we hold and wait for
                    // descriptors (the peer's receiver copies them out promptly).
                    self.drain_rings();
                    self.waiter.relax();
                }
                Err(SendError::NoSuchCore) => return Err(TransportError::Unreachable),
            }
        };
        self.waiter.busy();
        if handle.is_complete() {
            // Eager: nothing to track (no map entry, no allocation on the fast path).
            return Ok(SendTicket(COMPLETE_TICKET));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.sends.insert(ticket, handle);
        Ok(SendTicket(ticket))
    }

    fn send_complete(&mut self, ticket: SendTicket) -> bool {
        if ticket.0 == COMPLETE_TICKET {
            return true;
        }
        let Some(handle) = self.sends.get(&ticket.0) else { return true };
        let done = self.waiter.net.cores[self.waiter.core].lock().reclaiming().test(handle);
        if done {
            self.sends.remove(&ticket.0);
            self.waiter.busy();
        }
        done
    }

    /// Under one lock for the batch: this rank's inbox, then the rings (messages for the
    /// other ranks of the core go to their inboxes), each payload lent from the ring.
    fn drain(&mut self, sink: &mut dyn FnMut(&Header, &[u8])) -> Option<bool> {
        let mut any = false;
        if self.peeked.is_some() {
            // Peeked earlier and not taken: it comes first (FIFO).
            let header = self.peek().expect("a peeked message");
            let mut payload = alloc::vec![0u8; header.len];
            self.receive_payload(&mut payload);
            sink(&header, &payload);
            any = true;
        }
        // An `Rc` clone (no atomic): the lock guard borrows it, not `self`.
        let waiter = self.waiter.clone();
        let me = waiter.rank;
        let mut core = waiter.net.cores[waiter.core].lock();
        while let Some((mut header, data)) = core.pop_inbox(me) {
            self.settle_sync_ack(&mut header);
            sink(&header, &data);
            any = true;
        }
        let mut delivered_to_others = false;
        while let Some(message) = core.endpoint.poll() {
            let mut header = header_of(message.header());
            if header.dest == me {
                self.settle_sync_ack(&mut header);
                sink(&header, message.payload());
                core.endpoint.release(message);
                any = true;
            } else {
                core.move_to_inbox(header, message);
                delivered_to_others = true;
            }
        }
        drop(core);
        if delivered_to_others {
            waiter.net.machine().wake_all(waiter.core);
        }
        if any {
            waiter.busy();
        }
        Some(any)
    }

    fn peek(&mut self) -> Option<Header> {
        if self.peeked.is_none() {
            self.fetch();
        }
        let (header, _) = self.peeked.as_mut()?;
        if header.kind == MessageKind::SyncAck {
            if let Some(&cookie) = self.sync_cookies.get(&(header.cookie as u32)) {
                header.cookie = cookie;
            }
        }
        self.waiter.holding.set(true);
        self.waiter.busy();
        Some(*header)
    }

    fn receive_payload(&mut self, into: &mut [u8]) {
        let Some((header, held)) = self.peeked.take() else { return };
        self.waiter.holding.set(false);
        if header.kind == MessageKind::SyncAck {
            self.sync_cookies.remove(&(header.cookie as u32));
        }
        match held {
            Held::Copied(data) => into.copy_from_slice(&data),
            Held::Ring(message) => {
                assert_eq!(into.len(), message.len(), "a vbus payload is received whole");
                let mut core = self.waiter.net.cores[self.waiter.core].lock();
                if core.endpoint.receive_into(message, into).is_err() {
                    unreachable!("the buffer was checked to fit the payload");
                }
            }
        }
    }
}

impl<M: Machine> Drop for VbusPort<M> {
    fn drop(&mut self) {
        if let Some((_, Held::Ring(message))) = self.peeked.take() {
            self.waiter.net.cores[self.waiter.core].lock().endpoint.release(message);
        }
        // Rendezvous sends still in flight point at buffers the MPI layer may free
        // after this: wait until the receivers are done with them.
        let pending: Vec<SendHandle> = core::mem::take(&mut self.sends).into_values().collect();
        for handle in pending {
            loop {
                let done = self.waiter.net.cores[self.waiter.core].lock().reclaiming().test(&handle);
                if done {
                    break;
                }
                self.waiter.relax();
            }
        }
    }
}

#[cfg(test)]
mod core_lock_tests {
    use super::CoreLock;

    #[test]
    fn a_cooperative_core_lock_taken_twice_panics_instead_of_racing() {
        let lock = CoreLock::new(0u32, true);
        {
            let mut guard = lock.lock();
            *guard += 1;
            let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(lock.lock())));
            assert!(again.is_err(), "a second lock on a cooperative core must panic");
        }
        // The first guard's drop released it: the core's next caller gets it.
        assert_eq!(*lock.lock(), 1);
    }

    #[test]
    fn a_spinning_core_lock_excludes_other_threads() {
        let lock = CoreLock::new(0u64, false);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let mut guard = lock.lock();
                        let v = *guard;
                        std::hint::spin_loop();
                        *guard = v + 1;
                    }
                });
            }
        });
        assert_eq!(*lock.lock(), 40_000, "no increment lost");
    }
}

#[cfg(test)]
mod tests {
    //! The waiting protocol of ranks sharing a core, step by step: a machine that
    //! models the VM's scheduler with a script of what the other ranks do whenever
    //! the waiting rank lets them run, and reports a wait that nothing ends.
    use super::*;
    use core::cell::RefCell;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    std::thread_local! {
        /// What the other ranks do the next time the rank under test lets them run.
        static OTHERS: RefCell<Vec<Box<dyn FnOnce()>>> = const { RefCell::new(Vec::new()) };
    }

    fn others_run() {
        let steps: Vec<Box<dyn FnOnce()>> = OTHERS.with(|o| core::mem::take(&mut *o.borrow_mut()));
        for step in steps {
            step();
        }
    }

    /// One core's rank threads as the VM runs them: `yield_now` and `wait` let the
    /// other ranks run (the script); a `wait` that no notify or wake-up ends blocks
    /// for good, which is recorded instead.
    #[derive(Default)]
    struct Scripted {
        waiting: AtomicBool,
        woken: AtomicBool,
        token: AtomicBool,
        clock: AtomicU64,
        waits: AtomicU64,
        stuck: AtomicBool,
    }

    impl Notify for Scripted {
        fn notify(&self, _core: CoreId) {
            if self.waiting.load(Ordering::SeqCst) {
                self.woken.store(true, Ordering::SeqCst);
            } else {
                self.token.store(true, Ordering::SeqCst);
            }
        }
        fn wait(&self, _core: CoreId) {
            if self.token.swap(false, Ordering::SeqCst) {
                return;
            }
            self.waits.fetch_add(1, Ordering::SeqCst);
            self.waiting.store(true, Ordering::SeqCst);
            self.woken.store(false, Ordering::SeqCst);
            others_run();
            self.waiting.store(false, Ordering::SeqCst);
            if !self.woken.load(Ordering::SeqCst) {
                self.stuck.store(true, Ordering::SeqCst);
            }
        }
    }

    impl Machine for Scripted {
        fn yield_now(&self) {
            others_run();
        }
        fn now_ns(&self) -> u64 {
            self.clock.fetch_add(1_000, Ordering::SeqCst) + 1_000
        }
        fn wake_all(&self, _core: CoreId) {
            if self.waiting.load(Ordering::SeqCst) {
                self.woken.store(true, Ordering::SeqCst);
            }
        }
    }

    fn header(source: WireRank, dest: WireRank, len: usize) -> Header {
        Header { source, dest, tag: 0, context: 0, len, kind: MessageKind::Data, cookie: 0 }
    }

    /// Ranks 1 and 2 share core 1 and both send rendezvous messages to rank 0 on core 0.
    /// Rank 1 tests its send (not complete yet), then relaxes; while it lets rank 2 run,
    /// rank 0 receives rank 1's message and rank 2's `test` takes rank 1's returned
    /// descriptor back from the ring. Rank 1 must not then block on the rings: nothing
    /// else will ever arrive for it (the jacobi 8-ranks-on-2-vCPUs hang at its final
    /// gather, once idle cores halted instead of making waiters look again).
    #[test]
    fn a_completion_taken_back_by_another_rank_of_the_core_is_not_slept_on() {
        let config = Config { queue_size: 4, eager_max: 64, ..Config::new(2) };
        let net = Arc::new(VbusNet::new(config, Scripted::default(), 0).unwrap());
        let core_of = Rc::new(alloc::vec![Some(0), Some(1), Some(1)]);
        let (port0, _) = rank_port(net.clone(), 0, core_of.clone());
        let port0 = Rc::new(RefCell::new(port0));
        let (mut port1, waiter1) = rank_port(net.clone(), 1, core_of.clone());
        let (port2, _) = rank_port(net.clone(), 2, core_of);
        let (data1, data2) = (alloc::vec![1u8; 256], alloc::vec![2u8; 256]);
        let ticket1 = port1.start_send(&header(1, 0, 256), &data1).unwrap();
        let port2 = Rc::new(RefCell::new(port2));
        let ticket2 = port2.borrow_mut().start_send(&header(2, 0, 256), &data2).unwrap();
        assert!(!port1.send_complete(ticket1), "nobody received yet");
        let (p0, p2) = (port0.clone(), port2.clone());
        OTHERS.with(|o| {
            o.borrow_mut().push(Box::new(move || {
                let got = p0.borrow_mut().peek().expect("rank 1's message is on the ring");
                assert_eq!(got.source, 1);
                let mut into = alloc::vec![0u8; 256];
                p0.borrow_mut().receive_payload(&mut into);
                assert_eq!(into, alloc::vec![1u8; 256]);
                assert!(!p2.borrow_mut().send_complete(ticket2), "rank 2's message is not received");
            }))
        });
        waiter1.relax();
        let stuck = net.machine().stuck.load(Ordering::SeqCst);
        // Rank 0 takes rank 2's message too, so every send completes before the ports
        // drop (a port waits for its sends in flight when dropped).
        let mut into = alloc::vec![0u8; 256];
        assert_eq!(port0.borrow_mut().peek().map(|h| h.source), Some(2));
        port0.borrow_mut().receive_payload(&mut into);
        assert!(port2.borrow_mut().send_complete(ticket2));
        assert!(port1.send_complete(ticket1));
        assert!(!stuck, "rank 1 blocked for good: its send had completed meanwhile");
    }
}
