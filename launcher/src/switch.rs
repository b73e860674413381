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
    /// Interrupts raised (a guest about to halt asked for one).
    pub interrupts: u64,
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
        let header_ok = write_at(&buffer, 0, &header[..rx_header]);
        let p = &mut self.ports[to];
        let Some(queues) = p.vrings.as_ref() else { return Delivery::Dropped };
        // A frame that did not fit goes back as an empty one (a bare header), which the
        // guest's stack discards: a used length below the header would underflow there.
        let used = match (copied, header_ok) {
            (true, true) => rx_header + frame,
            (false, true) => rx_header,
            _ => 0,
        } as u32;
        let header_ok = header_ok && copied;
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
        for p in self.ports.iter_mut() {
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
                self.stats.interrupts += 1;
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

/// The readable (or, with `writable`, the writable) segments of a chain from byte
/// `skip` on: (address, length).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::{FromRawFd, IntoRawFd};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const QUEUE_SIZE: u16 = 256;
    /// Where each queue's rings lie in a test guest's memory, and its buffers.
    const RINGS: [u64; 2] = [0x0, 0x4000];
    const BUFFERS: [u64; 2] = [0x10_0000, 0x80_0000];
    const MEMORY: usize = 0x100_0000;

    fn mac(k: u8) -> [u8; 6] {
        [2, 0x74, 0x6f, 0, 0, k]
    }

    /// The driver side of one VM's two queues, as a guest would write them.
    struct Guest {
        memory: Memory,
        vrings: [Vring; 2],
        /// Per queue: descriptors handed out, used entries seen.
        posted: [u16; 2],
        seen: [u16; 2],
        /// The receive queue's interrupt: readable once the switch signalled it.
        interrupt: EventFd,
        header_len: usize,
    }

    fn avail(queue: usize) -> GuestAddress {
        GuestAddress(RINGS[queue] + 16 * QUEUE_SIZE as u64)
    }
    fn used(queue: usize) -> GuestAddress {
        GuestAddress((avail(queue).0 + 6 + 2 * QUEUE_SIZE as u64 + 3) & !3)
    }

    impl Guest {
        fn new(header_len: usize) -> Guest {
            let memory = GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap());
            let vrings = [0, 1].map(|q| {
                let v = Vring::new(memory.clone(), QUEUE_SIZE).unwrap();
                v.set_queue_size(QUEUE_SIZE);
                v.set_queue_info(RINGS[q], avail(q).0, used(q).0).unwrap();
                v.set_queue_ready(true);
                v.set_enabled(true);
                v
            });
            let interrupt = EventFd::new(EFD_NONBLOCK).unwrap();
            let call = interrupt.try_clone().unwrap().into_raw_fd();
            // SAFETY: `call` is a descriptor just duplicated for this File, owned by nobody else.
            #[allow(unsafe_code)]
            let call = unsafe { File::from_raw_fd(call) };
            vrings[RX].set_call(Some(call));
            let guest = Guest { memory, vrings, posted: [0; 2], seen: [0; 2], interrupt, header_len };
            // Polling drivers: no interrupt wanted until asked for.
            guest.set_interrupts(false);
            guest
        }

        fn mem(&self) -> GuestMemoryLoadGuard<GuestMemoryMmap> {
            self.memory.memory()
        }

        /// Publishes a one-descriptor chain of `len` bytes; returns its buffer's address.
        fn post(&mut self, queue: usize, len: usize, bytes: &[u8]) -> GuestAddress {
            let index = self.posted[queue];
            let slot = index % QUEUE_SIZE;
            let buffer = GuestAddress(BUFFERS[queue] + slot as u64 * 0x1_1000);
            let m = self.mem();
            m.write_slice(bytes, buffer).unwrap();
            let flags: u16 = if queue == RX { 2 } else { 0 }; // VRING_DESC_F_WRITE
            let descriptor = GuestAddress(RINGS[queue] + 16 * slot as u64);
            m.write_obj(buffer.0, descriptor).unwrap();
            m.write_obj(len as u32, descriptor.unchecked_add(8)).unwrap();
            m.write_obj(flags, descriptor.unchecked_add(12)).unwrap();
            m.write_obj(slot, avail(queue).unchecked_add(4 + 2 * slot as u64)).unwrap();
            std::sync::atomic::fence(Ordering::SeqCst);
            m.write_obj(index.wrapping_add(1), avail(queue).unchecked_add(2)).unwrap();
            self.posted[queue] += 1;
            buffer
        }

        /// Sends an Ethernet frame (destination, source, then `payload`).
        fn send(&mut self, to: [u8; 6], from: [u8; 6], payload: &[u8]) {
            let frame = [vec![0u8; self.header_len], to.to_vec(), from.to_vec(), vec![0x08, 0], payload.to_vec()].concat();
            self.post(TX, frame.len(), &frame);
        }

        /// Posts a receive buffer of `len` bytes.
        fn give_buffer(&mut self, len: usize) {
            self.post(RX, len, &[]);
        }

        /// Used entries since the last look: (descriptor id, length).
        fn used(&mut self, queue: usize) -> Vec<(u16, u32)> {
            let m = self.mem();
            let index: u16 = m.read_obj(used(queue).unchecked_add(2)).unwrap();
            let mut out = Vec::new();
            while self.seen[queue] != index {
                let entry = used(queue).unchecked_add(4 + 8 * (self.seen[queue] % QUEUE_SIZE) as u64);
                out.push((m.read_obj::<u32>(entry).unwrap() as u16, m.read_obj(entry.unchecked_add(4)).unwrap()));
                self.seen[queue] = self.seen[queue].wrapping_add(1);
            }
            out
        }

        /// The frames received since the last look, virtio-net header removed.
        fn received(&mut self) -> Vec<Vec<u8>> {
            let header = self.header_len;
            self.used(RX)
                .into_iter()
                .map(|(id, len)| {
                    let mut b = vec![0u8; len as usize];
                    self.mem().read_slice(&mut b, GuestAddress(BUFFERS[RX] + id as u64 * 0x1_1000)).unwrap();
                    b.split_off(header)
                })
                .collect()
        }

        fn set_interrupts(&self, on: bool) {
            self.mem().write_obj(if on { 0u16 } else { AVAIL_F_NO_INTERRUPT }, avail(RX)).unwrap();
        }

        fn interrupted(&self) -> bool {
            self.interrupt.read().is_ok()
        }
    }

    fn frame(to: [u8; 6], from: [u8; 6], payload: &[u8]) -> Vec<u8> {
        [to.to_vec(), from.to_vec(), vec![0x08, 0], payload.to_vec()].concat()
    }

    fn switch(guests: &[Guest]) -> Switch {
        let ports = guests.iter().enumerate().map(|(k, g)| Port::new(mac(k as u8), g.memory.clone())).collect();
        let mut switch = Switch::new(ports);
        for (k, g) in guests.iter().enumerate() {
            switch.attach(k, &g.vrings);
            switch.set_features(k, if g.header_len == 12 { 1 << 32 } else { 0 });
        }
        switch
    }

    #[test]
    fn unicast_goes_to_the_destination_mac_only_in_one_copy_of_its_bytes() {
        let mut g = [Guest::new(12), Guest::new(12), Guest::new(12)];
        let mut s = switch(&g);
        for guest in g.iter_mut() {
            guest.give_buffer(0x1_1000);
        }
        let big: Vec<u8> = (0..65_535u32).map(|i| (i * 7) as u8).collect();
        g[0].send(mac(2), mac(0), &big);
        assert!(s.pump());
        assert_eq!(g[2].received(), vec![frame(mac(2), mac(0), &big)]);
        assert!(g[1].received().is_empty());
        // The sender gets its buffer back at once.
        assert_eq!(g[0].used(TX).len(), 1);
        assert_eq!(s.stats, SwitchStats { delivered: 1, ..Default::default() });
        assert!(!s.pump(), "nothing left to move");
    }

    #[test]
    fn a_destination_without_buffers_holds_the_frames_in_order_until_it_posts() {
        let mut g = [Guest::new(12), Guest::new(12)];
        let mut s = switch(&g);
        for i in 0..3u8 {
            g[0].send(mac(1), mac(0), &[i; 100]);
        }
        s.pump();
        // Parked: not delivered, not dropped, not given back to the sender.
        assert!(g[1].received().is_empty());
        assert!(g[0].used(TX).is_empty());
        assert_eq!((s.stats.parked, s.stats.delivered), (3, 0));
        g[1].give_buffer(0x1_1000);
        s.pump();
        assert_eq!(g[1].received(), vec![frame(mac(1), mac(0), &[0; 100])]);
        assert_eq!(g[0].used(TX).len(), 1);
        // A frame sent now still comes after the held ones.
        g[0].send(mac(1), mac(0), &[9; 100]);
        g[1].give_buffer(0x1_1000);
        g[1].give_buffer(0x1_1000);
        g[1].give_buffer(0x1_1000);
        s.pump();
        assert_eq!(
            g[1].received(),
            vec![frame(mac(1), mac(0), &[1; 100]), frame(mac(1), mac(0), &[2; 100]), frame(mac(1), mac(0), &[9; 100])]
        );
        assert_eq!(g[0].used(TX).len(), 3);
        assert_eq!(s.stats.delivered, 4);
    }

    #[test]
    fn a_full_destination_does_not_hold_up_frames_to_the_others() {
        let mut g = [Guest::new(12), Guest::new(12), Guest::new(12)];
        let mut s = switch(&g);
        g[2].give_buffer(0x1_1000);
        g[0].send(mac(1), mac(0), b"to one");
        g[0].send(mac(2), mac(0), b"to two");
        s.pump();
        assert_eq!(g[2].received(), vec![frame(mac(2), mac(0), b"to two")]);
        // The frame to 2 is done, the one to 1 waits (out of order completion is virtio's).
        assert_eq!(g[0].used(TX).iter().map(|u| u.0).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn broadcast_reaches_every_other_vm_even_one_that_posts_later() {
        let mut g = [Guest::new(12), Guest::new(12), Guest::new(12)];
        let mut s = switch(&g);
        g[0].give_buffer(0x1_1000);
        g[1].give_buffer(0x1_1000);
        g[1].send([0xff; 6], mac(1), b"who has 169.254.1.1");
        s.pump();
        let arp = frame([0xff; 6], mac(1), b"who has 169.254.1.1");
        assert_eq!(g[0].received(), vec![arp.clone()]);
        assert!(g[1].received().is_empty(), "not back to its sender");
        // The sender's buffer is free at once; VM 2 gets a copy once it has a buffer.
        assert_eq!(g[1].used(TX).len(), 1);
        g[2].give_buffer(0x1_1000);
        s.pump();
        assert_eq!(g[2].received(), vec![arp]);
    }

    #[test]
    fn headers_of_legacy_and_modern_guests_are_converted() {
        let mut g = [Guest::new(10), Guest::new(12)];
        let mut s = switch(&g);
        g[0].give_buffer(0x1_1000);
        g[1].give_buffer(0x1_1000);
        g[0].send(mac(1), mac(0), b"legacy to modern");
        g[1].send(mac(0), mac(1), b"modern to legacy");
        s.pump();
        assert_eq!(g[1].received(), vec![frame(mac(1), mac(0), b"legacy to modern")]);
        assert_eq!(g[0].received(), vec![frame(mac(0), mac(1), b"modern to legacy")]);
    }

    #[test]
    fn unknown_oversized_and_gone_destinations_are_dropped_and_counted() {
        let mut g = [Guest::new(12), Guest::new(12), Guest::new(12)];
        let mut s = switch(&g);
        g[1].give_buffer(100);
        g[0].send(mac(9), mac(0), b"nobody");
        g[0].send(mac(1), mac(0), &[1; 200]);
        // VM 2 is gone while a frame waits for it: the frame is dropped, its sender's
        // buffer returned; later frames to it too.
        g[0].send(mac(2), mac(0), b"parked");
        s.pump();
        s.detach(2);
        g[0].send(mac(2), mac(0), b"late");
        s.pump();
        assert_eq!(g[0].used(TX).len(), 4, "every transmit buffer is given back");
        // The too-small receive buffer comes back holding an empty frame (a bare header).
        assert_eq!(g[1].used(RX), vec![(0, 12)]);
        assert_eq!(
            (s.stats.unknown_destination, s.stats.oversized, s.stats.dropped_gone, s.stats.delivered),
            (1, 1, 2, 0)
        );
    }

    #[test]
    fn interrupts_only_when_the_guest_asked_for_them() {
        let mut g = [Guest::new(12), Guest::new(12)];
        let mut s = switch(&g);
        g[1].give_buffer(0x1_1000);
        g[1].give_buffer(0x1_1000);
        g[0].send(mac(1), mac(0), b"polled");
        s.pump();
        assert!(!g[1].interrupted());
        g[1].set_interrupts(true);
        g[0].send(mac(1), mac(0), b"about to halt");
        s.pump();
        assert!(g[1].interrupted());
        // Transmit completions never interrupt.
        assert!(!g[0].interrupted());
        assert_eq!(g[1].received().len(), 2);
    }

    #[test]
    fn transmit_kicks_are_suppressed_while_polling_and_pending_buffers_are_seen_on_rearm() {
        let mut g = [Guest::new(12), Guest::new(12)];
        let mut s = switch(&g);
        let flags = |g: &Guest| g.mem().read_obj::<u16>(used(TX)).unwrap();
        s.set_transmit_kicks(false);
        assert_eq!(flags(&g[0]) & 1, 1, "VRING_USED_F_NO_NOTIFY while polling");
        assert!(!s.set_transmit_kicks(true));
        assert_eq!(flags(&g[0]) & 1, 0);
        // A buffer published while kicks were off is reported when they come back on.
        s.set_transmit_kicks(false);
        g[0].send(mac(1), mac(0), b"x");
        assert!(s.set_transmit_kicks(true));
    }
}
