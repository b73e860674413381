//! The job's Ethernet segment for `--net-backend vhost-user`: frames go from one VM's
//! transmit virtqueue straight into another VM's receive virtqueue, one copy, in the
//! launcher (guest RAM of every VM is shared with it, see `vhost_user`).
//!
//! Forwarding is the hub's (hub.rs): the plan gives every VM's MAC; a frame goes to the
//! port whose MAC is its destination, broadcast and multicast to every other port.
//!
//! Back-pressure, never a silent drop: a unicast frame whose destination has no receive
//! buffer posted is *parked*: its transmit descriptor chain is taken off the sender's
//! ring but not returned (the sender's TCP window bounds how many), and it is copied
//! once the destination posts buffers, in order. A broadcast frame that finds a port
//! without a buffer is copied aside for that port (ARP: a few small frames). Only a
//! frame to a VM that is gone, to a MAC no VM has, or larger than the destination's
//! buffer is dropped, and counted (`SwitchStats`).
//!
//! Interrupts: the guests poll their rings and want an interrupt only when their ranks
//! are about to halt (VIRTQ_AVAIL_F_NO_INTERRUPT clear in the available ring's flags:
//! transport/inter-net/src/vm.rs). `virtio-queue` does not read that flag (its
//! `needs_notification` is always true without EVENT_IDX), so the switch reads it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryLoadGuard, GuestMemoryMmap};

/// A VM's guest memory, as the vhost-user front-end (QEMU) shared it.
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap>;
/// A virtqueue of a VM's NIC.
pub type Vring = VringRwLock<Memory>;
type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>;

/// virtio-net's queue indexes.
pub const RX: usize = 0;
pub const TX: usize = 1;
/// VIRTQ_AVAIL_F_NO_INTERRUPT.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const ETHERNET_HEADER: usize = 14;
/// Broadcast frames copied aside for one port before further ones to it are dropped
/// (and counted): ARP and the like, a handful per job.
const HELD_COPIES_MAX: usize = 256;

/// What the switch did, for the launcher's warnings and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Frames copied into a receive buffer (a broadcast counts once per port).
    pub delivered: u64,
    /// Deliveries that waited for the destination to post a buffer.
    pub parked: u64,
    /// Dropped: the destination VM is gone, or too many broadcasts were held for it.
    pub dropped_gone: u64,
    /// Dropped: a unicast to a MAC no VM has, or shorter than an Ethernet header.
    pub unknown_destination: u64,
    /// Dropped: larger than the destination's receive buffer.
    pub oversized: u64,
}

/// A frame waiting for a receive buffer of its destination.
enum Held {
    /// A transmit chain of port `from`, returned to it once copied.
    Chain { from: usize, chain: Chain, len: usize },
    /// A broadcast frame's bytes, virtio-net header excluded.
    Copy(Vec<u8>),
}

/// One VM's NIC as the switch sees it.
pub struct Port {
    mac: [u8; 6],
    memory: Memory,
    /// Receive and transmit queues, once the VM's driver set them up.
    vrings: Option<[Vring; 2]>,
    /// Bytes of the virtio-net header in front of every frame: 12 with VERSION_1 or
    /// MRG_RXBUF, 10 on a legacy device without it.
    header_len: usize,
    /// Frames for this port waiting for its receive buffers, oldest first.
    held: VecDeque<Held>,
    held_copies: usize,
    /// The VM's QEMU is gone: frames to it are dropped.
    gone: bool,
    /// Used receive buffers added since the last interrupt check.
    rx_used: bool,
}

impl Port {
    pub fn new(mac: [u8; 6], memory: Memory) -> Port {
        Port { mac, memory, vrings: None, header_len: 12, held: VecDeque::new(), held_copies: 0, gone: false, rx_used: false }
    }

    fn queues(&self) -> Option<&[Vring; 2]> {
        self.vrings.as_ref().filter(|v| v.iter().all(|q| q.get_ref().get_queue().ready() && q.get_ref().is_enabled()))
    }
}

/// Where a frame goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    One(usize),
    AllBut(usize),
    Nowhere,
}

/// Outcome of copying a frame into a port's next receive buffer.
enum Delivery {
    Done,
    NoBuffer,
    Dropped,
}

pub struct Switch {
    ports: Vec<Port>,
    pub stats: SwitchStats,
}

impl Switch {
    pub fn new(ports: Vec<Port>) -> Switch {
        Switch { ports, stats: SwitchStats::default() }
    }

    /// The VM's driver has set up its queues (the first event on them).
    pub fn attach(&mut self, port: usize, vrings: &[Vring]) {
        if let (Some(p), [rx, tx, ..]) = (self.ports.get_mut(port), vrings) {
            if p.vrings.is_none() {
                p.vrings = Some([rx.clone(), tx.clone()]);
            }
        }
    }

    pub fn set_features(&mut self, port: usize, features: u64) {
        const VERSION_1: u64 = 1 << 32;
        const MRG_RXBUF: u64 = 1 << 15;
        if let Some(p) = self.ports.get_mut(port) {
            p.header_len = if features & (VERSION_1 | MRG_RXBUF) != 0 { 12 } else { 10 };
        }
    }

    /// The VM's QEMU is gone: what waits for it is dropped, and so will be what comes.
    pub fn detach(&mut self, port: usize) {
        let Some(p) = self.ports.get_mut(port) else { return };
        p.gone = true;
        p.vrings = None;
        let held: Vec<Held> = p.held.drain(..).collect();
        p.held_copies = 0;
        self.stats.dropped_gone += held.len() as u64;
        for h in held {
            if let Held::Chain { from, chain, .. } = h {
                self.complete_transmit(from, chain.head_index());
            }
        }
    }

    /// Moves every frame it can: held frames first, then the transmit rings. Returns
    /// whether anything moved. Raises the interrupts the guests asked for.
    pub fn pump(&mut self) -> bool {
        let mut moved = false;
        for to in 0..self.ports.len() {
            moved |= self.flush_held(to);
        }
        for from in 0..self.ports.len() {
            moved |= self.drain_transmit(from);
        }
        self.raise_interrupts();
        moved
    }

    /// Sets or clears VRING_USED_F_NO_NOTIFY on every transmit queue: set while the
    /// switch polls them anyway, so the guests do not exit to kick. Clearing returns
    /// whether a queue has buffers already (the caller polls again then).
    pub fn set_transmit_kicks(&mut self, enabled: bool) -> bool {
        let mut pending = false;
        for p in &self.ports {
            let Some(q) = p.queues() else { continue };
            if enabled {
                pending |= q[TX].enable_notification().unwrap_or(false);
            } else {
                let _ = q[TX].disable_notification();
            }
        }
        pending
    }

    fn route(&self, from: usize, destination: &[u8; 6]) -> Route {
        if destination[0] & 1 == 1 {
            return Route::AllBut(from);
        }
        match self.ports.iter().position(|p| p.mac == *destination) {
            Some(to) if to != from => Route::One(to),
            _ => Route::Nowhere,
        }
    }

    fn drain_transmit(&mut self, from: usize) -> bool {
        let mut moved = false;
        loop {
            let Some(queues) = self.ports[from].queues() else { return moved };
            let memory = self.ports[from].memory.memory();
            let Some(chain) = queues[TX].get_mut().get_queue_mut().pop_descriptor_chain(memory) else { return moved };
            moved = true;
            let header_len = self.ports[from].header_len;
            let len = readable_len(&chain);
            let mut destination = [0u8; 6];
            if len < header_len + ETHERNET_HEADER || read_at(&chain, header_len, &mut destination).is_err() {
                self.stats.unknown_destination += 1;
                self.complete_transmit(from, chain.head_index());
                continue;
            }
            match self.route(from, &destination) {
                Route::One(to) => {
                    if self.ports[to].held.is_empty() {
                        match self.deliver(to, &chain, header_len, len) {
                            Delivery::Done | Delivery::Dropped => self.complete_transmit(from, chain.head_index()),
                            Delivery::NoBuffer => {
                                self.stats.parked += 1;
                                self.ports[to].held.push_back(Held::Chain { from, chain, len });
                            }
                        }
                    } else {
                        self.stats.parked += 1;
                        self.ports[to].held.push_back(Held::Chain { from, chain, len });
                    }
                }
                Route::AllBut(_) => {
                    let mut copy = None;
                    for to in (0..self.ports.len()).filter(|&to| to != from) {
                        let delivered = self.ports[to].held.is_empty()
                            && !matches!(self.deliver(to, &chain, header_len, len), Delivery::NoBuffer);
                        if !delivered {
                            let bytes = copy.get_or_insert_with(|| {
                                let mut b = vec![0u8; len - header_len];
                                let _ = read_at(&chain, header_len, &mut b);
                                b
                            });
                            self.hold_copy(to, bytes.clone());
                        }
                    }
                    self.complete_transmit(from, chain.head_index());
                }
                Route::Nowhere => {
                    self.stats.unknown_destination += 1;
                    self.complete_transmit(from, chain.head_index());
                }
            }
        }
    }

    fn hold_copy(&mut self, to: usize, bytes: Vec<u8>) {
        let p = &mut self.ports[to];
        if p.held_copies >= HELD_COPIES_MAX {
            self.stats.dropped_gone += 1;
            return;
        }
        p.held_copies += 1;
        p.held.push_back(Held::Copy(bytes));
        self.stats.parked += 1;
    }

    /// Delivers what waits for port `to`, oldest first, while it has buffers.
    fn flush_held(&mut self, to: usize) -> bool {
        let mut moved = false;
        while let Some(front) = self.ports[to].held.pop_front() {
            let outcome = match &front {
                Held::Chain { from, chain, len } => {
                    let header_len = self.ports[*from].header_len;
                    self.deliver(to, chain, header_len, *len)
                }
                Held::Copy(bytes) => self.deliver_bytes(to, bytes),
            };
            if matches!(outcome, Delivery::NoBuffer) {
                self.ports[to].held.push_front(front);
                return moved;
            }
            moved = true;
            match front {
                Held::Chain { from, chain, .. } => self.complete_transmit(from, chain.head_index()),
                Held::Copy(_) => self.ports[to].held_copies -= 1,
            }
        }
        moved
    }

    /// Takes port `to`'s next receive buffer; None when it has none (its receive kicks
    /// are then enabled, so its next post wakes the switch) or is not running.
    fn receive_buffer(&mut self, to: usize) -> Result<Chain, Delivery> {
        let p = &self.ports[to];
        if p.gone {
            self.stats.dropped_gone += 1;
            return Err(Delivery::Dropped);
        }
        let Some(queues) = p.queues() else { return Err(Delivery::NoBuffer) };
        let rx = &queues[RX];
        loop {
            // (Its own statement: the ring's lock is released before the next call takes it.)
            let popped = rx.get_mut().get_queue_mut().pop_descriptor_chain(p.memory.memory());
            if let Some(chain) = popped {
                // While it has buffers the guest need not kick to post more.
                let _ = rx.disable_notification();
                return Ok(chain);
            }
            // Ask for a kick when it posts, then look again (it may have posted since).
            if !rx.enable_notification().unwrap_or(false) {
                return Err(Delivery::NoBuffer);
            }
        }
    }

    /// Copies a frame (the bytes after the sender's virtio-net header) from a transmit
    /// chain into port `to`'s next receive buffer.
    fn deliver(&mut self, to: usize, chain: &Chain, header_len: usize, len: usize) -> Delivery {
        let buffer = match self.receive_buffer(to) {
            Ok(b) => b,
            Err(d) => return d,
        };
        let rx_header = self.ports[to].header_len;
        let frame = len - header_len;
        let source = chain.memory();
        let copied = copy_chain(source, chain, header_len, &buffer, rx_header, frame);
        self.finish_receive(to, buffer, rx_header, frame, copied)
    }

    fn deliver_bytes(&mut self, to: usize, bytes: &[u8]) -> Delivery {
        let buffer = match self.receive_buffer(to) {
            Ok(b) => b,
            Err(d) => return d,
        };
        let rx_header = self.ports[to].header_len;
        let copied = write_at(&buffer, rx_header, bytes);
        self.finish_receive(to, buffer, rx_header, bytes.len(), copied)
    }

    fn finish_receive(&mut self, to: usize, buffer: Chain, rx_header: usize, frame: usize, copied: bool) -> Delivery {
        // The virtio-net header: no offloads negotiated, all zero (num_buffers, when
        // present, is 1).
        let mut header = [0u8; 12];
        if rx_header == 12 {
            header[10] = 1;
        }
        let header_ok = copied && write_at(&buffer, 0, &header[..rx_header]);
        let p = &mut self.ports[to];
        let Some(queues) = p.vrings.as_ref() else { return Delivery::Dropped };
        let used = if header_ok { (rx_header + frame) as u32 } else { 0 };
        let _ = queues[RX].add_used(buffer.head_index(), used);
        p.rx_used = true;
        if header_ok {
            self.stats.delivered += 1;
            Delivery::Done
        } else {
            self.stats.oversized += 1;
            Delivery::Dropped
        }
    }

    fn complete_transmit(&mut self, from: usize, head: u16) {
        if let Some(queues) = self.ports[from].vrings.as_ref() {
            let _ = queues[TX].add_used(head, 0);
        }
    }

    /// Signals the receive queues that got buffers back and whose guest asked for an
    /// interrupt (transmit completions never interrupt: the guests poll for them).
    fn raise_interrupts(&mut self) {
        for p in &mut self.ports {
            if !std::mem::take(&mut p.rx_used) {
                continue;
            }
            let Some(queues) = p.vrings.as_ref() else { continue };
            let rx = &queues[RX];
            std::sync::atomic::fence(Ordering::SeqCst);
            let avail = GuestAddress(rx.get_ref().get_queue().avail_ring());
            let flags: u16 = p.memory.memory().load(avail, Ordering::Acquire).unwrap_or(0);
            if flags & AVAIL_F_NO_INTERRUPT == 0 {
                let _ = rx.signal_used_queue();
            }
        }
    }

    pub fn port_count(&self) -> usize {
        self.ports.len()
    }
}

/// Bytes in a chain's readable descriptors.
fn readable_len(chain: &Chain) -> usize {
    chain.clone().readable().map(|d| d.len() as usize).sum()
}

/// The readable segments of a chain from byte `skip` on: (address, length).
fn segments(chain: &Chain, writable: bool, mut skip: usize) -> Vec<(GuestAddress, usize)> {
    let descriptors: Vec<_> = if writable { chain.clone().writable().collect() } else { chain.clone().readable().collect() };
    let mut out = Vec::with_capacity(descriptors.len());
    for d in descriptors {
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        out.push((d.addr().unchecked_add(skip as u64), len - skip));
        skip = 0;
    }
    out
}

/// Reads `out.len()` bytes of the chain's readable part from byte `at`.
fn read_at(chain: &Chain, at: usize, out: &mut [u8]) -> Result<(), ()> {
    let memory = chain.memory();
    let mut done = 0;
    for (addr, len) in segments(chain, false, at) {
        if done == out.len() {
            break;
        }
        let n = len.min(out.len() - done);
        memory.read_slice(&mut out[done..done + n], addr).map_err(|_| ())?;
        done += n;
    }
    if done == out.len() { Ok(()) } else { Err(()) }
}

/// Writes `bytes` into the chain's writable part from byte `at`; false if they do not fit.
fn write_at(chain: &Chain, at: usize, bytes: &[u8]) -> bool {
    let memory = chain.memory();
    let mut done = 0;
    for (addr, len) in segments(chain, true, at) {
        if done == bytes.len() {
            break;
        }
        let n = len.min(bytes.len() - done);
        if memory.write_slice(&bytes[done..done + n], addr).is_err() {
            return false;
        }
        done += n;
    }
    done == bytes.len()
}

/// Copies `len` bytes from a transmit chain (from byte `skip`) into a receive chain (from
/// byte `at`), memory to memory; false if they do not fit.
fn copy_chain(source: &GuestMemoryMmap, from: &Chain, skip: usize, to: &Chain, at: usize, len: usize) -> bool {
    let target = to.memory();
    let mut src = segments(from, false, skip).into_iter();
    let mut dst = segments(to, true, at).into_iter();
    let (mut s, mut d) = (src.next(), dst.next());
    let mut left = len;
    while left > 0 {
        let (Some((sa, sl)), Some((da, dl))) = (s, d) else { return false };
        let n = sl.min(dl).min(left);
        let (Ok(from_slice), Ok(to_slice)) = (source.get_slice(sa, n), target.get_slice(da, n)) else { return false };
        from_slice.copy_to_volatile_slice(to_slice);
        left -= n;
        s = if n == sl { src.next() } else { Some((sa.unchecked_add(n as u64), sl - n)) };
        d = if n == dl { dst.next() } else { Some((da.unchecked_add(n as u64), dl - n)) };
    }
    true
}
