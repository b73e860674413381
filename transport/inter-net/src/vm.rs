//! The VM side (feature `virtio`): a poll-mode virtio-net driver (through the
//! `virtio-drivers` crate, virtio-mmio on microvm, virtio-pci on q35: see `pci`) as a
//! smoltcp `phy::Device`, running in ring 3, and `start`, which the glue calls once
//! per VM.
//!
//! VM exits: under KVM PVM every register access from ring 3 costs 85–100 µs, so the
//! data path touches registers only to notify, at most once per queue per `Node::poll`:
//! `Counting` holds back the notifies `virtio-drivers` asks for during a poll, and at
//! the end (`Nic::flush`) each queue that got buffers is notified once — after a full
//! fence, and only if the device's used-ring flags do not suppress it right then (see
//! `Control::flush` for the missed-notify race this closes). VIRTIO_F_EVENT_IDX is not
//! negotiated. Completions are found by reading the used rings. Interrupts are
//! disabled on both queues (a flag in ring memory), except the receive queue's while
//! `Nic::arm_receive` asks for them (ranks of the VM are about to halt: see
//! `node::Shared::prepare_wait`); they are never acknowledged (the glue routes the
//! line edge-triggered, and virtio-mmio raises it at every notification; on PCI each
//! notification is an MSI-X message). Every register access is counted (`exits`).
//!
//! Frame size: the launcher's vhost-user back-end copies any frame that fits the
//! receive buffer, its hub (and QEMU's datagram netdev) frames up to QEMU's
//! NET_BUFSIZE, so the interface's MTU is `NetConfig::mtu`, by default IPv4's
//! largest packet (65535 bytes: TCP segments of 65495 bytes, 45 times fewer frames than
//! Ethernet's 1500): with Ethernet frames the host path's cost per frame (QEMU's main
//! loops, threads waiting for a core) bounded bandwidth. VIRTIO_NET_F_MRG_RXBUF is not negotiated
//! (`virtio-drivers` does not offer it): every receive buffer holds a whole frame plus
//! the virtio-net header, since QEMU drops (silently) a frame larger than the buffer it
//! is given (the vhost-user back-end returns it empty, and counts it). Receive buffers
//! take at most `RX_MEMORY` (63 slots of 64 KiB at the default MTU, half the ring at
//! Ethernet sizes); a received buffer is handed to smoltcp as is
//! and a spare is posted in its place (no copy). Transmit buffers come in two sizes
//! (small frames such as ACKs take a small one) and are kept for reuse once the device
//! is done with them, so their memory is what the TCP windows put in flight.
//!
//! What the glue calls (once per VM, before the ranks initialize MPI):
//! ```ignore
//! let net = inter_net::vm::start::<inter_net::vm::IdentityHal>(config, clock_us, fatal)?;
//! // per rank r of this VM:
//! let transport = inter_net::NetEndpoint::boxed(net.clone(), r);
//! // RankSetup { transports: vec![vbus, transport], routes: RouteTable::loopback_only()
//! //     .with(Reach::SameVm, 0).with(Reach::OtherVm, 1), .. }
//! ```
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use smoltcp::phy::{self, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
pub use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::mmio::VirtIOHeader;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::node::{Clock, Fatal, NetConfig, Nic, Node, Shared};
use crate::pci::PciNic;

/// microvm's virtio-mmio window: 24 slots of 0x200 bytes from here.
pub const MMIO_BASE: usize = 0xFEB0_0000;
pub const MMIO_SLOT_SIZE: usize = 0x200;
pub const MMIO_SLOTS: usize = 24;

/// QEMU's virtio-net queues have 256 entries by default.
const QUEUE_SIZE: usize = 256;
/// virtio-net's queue indexes (as `virtio-drivers` uses them).
pub(crate) const QUEUE_RECEIVE: u16 = 0;
const QUEUE_TRANSMIT: u16 = 1;
const PAGE: usize = 4096;
const ETHERNET_HEADER: usize = 14;
/// The virtio-net header in front of every frame: 12 bytes with VERSION_1, 10 on a
/// legacy device (microvm's default); buffers leave room for the larger.
const VIRTIO_HEADER_MAX: usize = 12;
/// The most memory the posted receive buffers take.
pub const RX_MEMORY: usize = 4 << 20;
/// Transmit buffers for frames up to this size (ACKs, small messages) are small ones.
const SMALL_BUFFER: usize = 2048;

/// Bytes of one receive (and large transmit) buffer for an IP MTU.
pub fn buffer_len(mtu: usize) -> usize {
    VIRTIO_HEADER_MAX + ETHERNET_HEADER + mtu
}

/// Receive buffers posted for an IP MTU: as many as `RX_MEMORY` holds, at most half
/// the ring (the other half stays free so a burst of posts never finds it full), at
/// least 8.
pub fn rx_slots(mtu: usize) -> usize {
    (RX_MEMORY / buffer_len(mtu)).clamp(8, QUEUE_SIZE / 2)
}

static NOTIFIES: AtomicU64 = AtomicU64::new(0);
/// MMIO address of the network device `probe_mmio` found (0: none yet).
static DEVICE_ADDRESS: AtomicUsize = AtomicUsize::new(0);

/// How the network device's receive interrupt reaches the cores, once `start` found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// virtio-mmio (microvm): the line of the transport at this address, which the
    /// machine names (the runtime's `route_interrupt`).
    MmioLine(usize),
    /// virtio-pci with MSI-X (q35): a message the driver writes into the device
    /// (`pci::route_msix`).
    Msix,
}

/// The network device's interrupt (`None`: none found, or the device has none).
pub fn interrupt() -> Option<Interrupt> {
    match DEVICE_ADDRESS.load(Ordering::Relaxed) {
        0 if crate::pci::has_msix() => Some(Interrupt::Msix),
        0 => None,
        address => Some(Interrupt::MmioLine(address)),
    }
}

/// Routes the network device's receive interrupt to the cores: a virtio-mmio line
/// through `route_line(transport address)`, MSI-X with the message `msi_message`
/// gives. False when the device has no interrupt or it could not be routed.
pub fn route_receive_interrupt(route_line: impl FnOnce(usize) -> bool, msi_message: impl FnOnce() -> Option<(u64, u32)>) -> bool {
    match interrupt() {
        Some(Interrupt::MmioLine(address)) => route_line(address),
        Some(Interrupt::Msix) => msi_message().is_some_and(|(address, data)| crate::pci::route_msix(address, data)),
        None => false,
    }
}
static OTHER_REGISTER_ACCESSES: AtomicU64 = AtomicU64::new(0);

/// Register accesses (each a VM exit under PVM) since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exits {
    /// Queue notifications (the data path's only register writes).
    pub notifies: u64,
    /// Everything else: set-up, status, config reads.
    pub other: u64,
}

pub fn exits() -> Exits {
    Exits { notifies: NOTIFIES.load(Ordering::Relaxed), other: OTHER_REGISTER_ACCESSES.load(Ordering::Relaxed) }
}

/// Identity-mapped DMA: guest memory has virtual == physical, and the heap is ordinary RAM.
pub struct IdentityHal;

// SAFETY: dma_alloc returns zeroed, page-aligned memory owned by the caller until
// dma_dealloc; addresses are identity mapped, so the device's address of a byte is its pointer.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages.max(1) * PAGE, PAGE).expect("DMA layout");
        // SAFETY: the layout has a non-zero size.
        let pointer = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let pointer = NonNull::new(pointer).expect("out of memory for virtio-net queues");
        (pointer.as_ptr() as PhysAddr, pointer)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = Layout::from_size_align(pages.max(1) * PAGE, PAGE).expect("DMA layout");
        // SAFETY: allocated by dma_alloc with this layout (the caller's contract).
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("null MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The device's transport, shared between `virtio-drivers` (through `Counting`) and
/// `VirtioNet::flush`, which issues the notifies held back during a poll.
struct Control<T: Transport> {
    inner: T,
    /// After set-up, notifies are held back until `flush`.
    batching: bool,
    /// Queues `virtio-drivers` asked to notify since the last flush (bit per queue < 64).
    pending: u64,
    /// Queues given new buffers since the last flush (bit per queue < 64).
    added: u64,
    /// Address of each queue's used ring (the device area), as set up; identity mapped.
    used_rings: [usize; 2],
    /// Address of each queue's available ring (the driver area), as set up; identity mapped.
    avail_rings: [usize; 2],
}

/// VIRTQ_USED_F_NO_NOTIFY: the device does not want to be notified (it is busy with
/// the queue and will look at the available ring again before it stops).
const USED_F_NO_NOTIFY: u16 = 1;

impl<T: Transport> Control<T> {
    /// Issues at most one notify per queue that got buffers since the last flush: when
    /// `virtio-drivers` asked for it, or when the device does not suppress notifies now.
    ///
    /// The decision is taken here, after a full fence, and not from what `virtio-drivers`
    /// saw when it added a buffer: there it stores the available index and then loads
    /// the used ring's flags with no store→load barrier between them (x86 may satisfy
    /// the load before the store is visible). The device does the mirror image (it
    /// clears NO_NOTIFY, fences, then reads the available index), so without the fence
    /// each side can miss the other: the device goes to sleep on a queue holding new
    /// buffers and nobody notifies it. On the receive queue that stalls reception for
    /// good (buffers are only posted again when a frame arrives); on the transmit queue
    /// frames sit until the next transmission (a retransmission or a keep-alive,
    /// hundreds of ms later). That was the bandwidth-phase "hang".
    fn flush(&mut self) {
        let requested = core::mem::take(&mut self.pending);
        let mut candidates = core::mem::take(&mut self.added) | requested;
        if candidates == 0 {
            return;
        }
        // Make the available-ring updates visible before reading the device's flags.
        core::sync::atomic::fence(Ordering::SeqCst);
        while candidates != 0 {
            let queue = candidates.trailing_zeros() as u16;
            candidates &= candidates - 1;
            let used = self.used_rings.get(queue as usize).copied().unwrap_or(0);
            // A notify `virtio-drivers` asked for (it saw the flag clear when it added a
            // buffer) is always issued, as before; the fresh check adds the ones it
            // missed.
            let suppressed = requested & (1 << queue) == 0 && used != 0 && {
                // SAFETY: `used` is the address of this queue's used ring, which the
                // device writes and `virtio-drivers` keeps allocated (DMA memory,
                // identity mapped) for as long as the device exists; `Control` lives
                // no longer than the device. Its first field is the 16-bit flags word,
                // 2-aligned; a volatile read observes the device's latest write.
                let flags = unsafe { core::ptr::read_volatile(used as *const u16) };
                flags & USED_F_NO_NOTIFY != 0
            };
            if !suppressed {
                NOTIFIES.fetch_add(1, Ordering::Relaxed);
                self.inner.notify(queue);
            }
        }
    }
}

impl<T: Transport> Control<T> {
    /// Asks the device for used-buffer notifications (interrupts) on `queue`, or not:
    /// VIRTQ_AVAIL_F_NO_INTERRUPT in the available ring's flags (memory, no VM exit).
    fn set_interrupts(&self, queue: u16, enabled: bool) {
        let Some(&avail) = self.avail_rings.get(queue as usize).filter(|a| **a != 0) else { return };
        // SAFETY: `avail` is the address of this queue's available ring (DMA memory,
        // identity mapped, kept allocated by `virtio-drivers` as long as the device
        // exists, which `Control` does not outlive); its first field is the 16-bit flags
        // word, 2-aligned, which `virtio-drivers` writes only in `enable_interrupts` /
        // `disable_interrupts` (called once, in `VirtioNet::new`).
        let flags = unsafe { &*(avail as *const core::sync::atomic::AtomicU16) };
        flags.store(if enabled { 0 } else { 1 }, Ordering::SeqCst);
    }
}

/// A `virtio-drivers` transport that counts register accesses and holds notifies back.
pub struct Counting<T: Transport> {
    control: Arc<spin::Mutex<Control<T>>>,
}

fn count_other() {
    OTHER_REGISTER_ACCESSES.fetch_add(1, Ordering::Relaxed);
}

/// Counts register accesses made outside `Counting` (probing, PCI configuration).
pub(crate) fn count_register_accesses(n: u64) {
    OTHER_REGISTER_ACCESSES.fetch_add(n, Ordering::Relaxed);
}

impl<T: Transport> Transport for Counting<T> {
    fn device_type(&self) -> DeviceType {
        count_other();
        self.control.lock().inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        count_other();
        // Hide VIRTIO_F_EVENT_IDX (bit 29): with it, virtio-drivers 0.13 asks for an
        // interrupt on every used buffer (used_event = last used index) and ignores
        // `disable_interrupts`; its avail_event test is not wrap-safe either. Without it,
        // the ring flags suppress interrupts (poll mode) and the device's NO_NOTIFY flag
        // suppresses our notifies while it is busy.
        self.control.lock().inner.read_device_features() & !(1 << 29)
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        count_other();
        self.control.lock().inner.write_driver_features(driver_features)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        count_other();
        self.control.lock().inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        let mut control = self.control.lock();
        if control.batching && queue < 64 {
            control.pending |= 1 << queue;
        } else {
            NOTIFIES.fetch_add(1, Ordering::Relaxed);
            control.inner.notify(queue)
        }
    }
    fn get_status(&self) -> DeviceStatus {
        count_other();
        self.control.lock().inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        count_other();
        self.control.lock().inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        count_other();
        self.control.lock().inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.control.lock().inner.requires_legacy_layout()
    }
    fn queue_set(&mut self, queue: u16, size: u32, descriptors: PhysAddr, driver_area: PhysAddr, device_area: PhysAddr) {
        count_other();
        let mut control = self.control.lock();
        if let Some(slot) = control.used_rings.get_mut(queue as usize) {
            // Identity mapped (the Hal's contract here): the device address is the pointer.
            *slot = device_area as usize;
        }
        if let Some(slot) = control.avail_rings.get_mut(queue as usize) {
            *slot = driver_area as usize;
        }
        control.inner.queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        count_other();
        self.control.lock().inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        count_other();
        self.control.lock().inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        count_other();
        self.control.lock().inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        count_other();
        self.control.lock().inner.read_config_generation()
    }
    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<V> {
        count_other();
        self.control.lock().inner.read_config_space(offset)
    }
    fn write_config_space<V: IntoBytes + Immutable>(&mut self, offset: usize, value: V) -> virtio_drivers::Result<()> {
        count_other();
        self.control.lock().inner.write_config_space(offset, value)
    }
}

type Raw<H, T> = VirtIONetRaw<H, Counting<T>, QUEUE_SIZE>;

/// The transmit half: the device and the transmit buffers.
struct TxSide<H: Hal, T: Transport> {
    raw: Raw<H, T>,
    /// Buffers the device is done with: `SMALL_BUFFER` bytes, and `large_len`.
    free_small: Vec<Box<[u8]>>,
    free_large: Vec<Box<[u8]>>,
    large_len: usize,
    /// Buffer of each descriptor token in flight.
    in_flight: Vec<Option<Box<[u8]>>>,
    control: Arc<spin::Mutex<Control<T>>>,
}

/// A virtio-net device in poll mode.
pub struct VirtioNet<H: Hal, T: Transport> {
    tx: TxSide<H, T>,
    control: Arc<spin::Mutex<Control<T>>>,
    /// Receive buffer of each posted descriptor token.
    rx_posted: Vec<Option<Box<[u8]>>>,
    /// The buffer holding the frame smoltcp was last given, and where the frame lies in
    /// it; posted again (as a spare) on the next `receive`.
    rx_current: Option<(Box<[u8]>, usize, usize)>,
    /// Received buffers ready to be posted in place of the next received ones.
    rx_spare: Vec<Box<[u8]>>,
    mtu: usize,
    /// `NetConfig::checksums`: compute and check IPv4 and TCP checksums.
    checksums: bool,
    pub frames_received: u64,
    pub frames_sent: u64,
    /// The largest frame received, bytes (without the virtio-net header).
    pub largest_received: usize,
}

/// Why the network could not start.
#[derive(Debug)]
pub enum StartError {
    NoDevice,
    /// The PCI device could not be set up (q35).
    Pci(crate::pci::PciError),
    Device(virtio_drivers::Error),
    /// The device's MAC is not the one the launcher planned.
    WrongMac { planned: [u8; 6], device: [u8; 6] },
}

impl<H: Hal, T: Transport> VirtioNet<H, T> {
    /// Sets the device up for frames of IP MTU `mtu` (see `NetConfig::mtu`).
    pub fn new(transport: T, mtu: usize) -> Result<VirtioNet<H, T>, virtio_drivers::Error> {
        let control = Arc::new(spin::Mutex::new(Control { inner: transport, batching: false, pending: 0, added: 0, used_rings: [0; 2], avail_rings: [0; 2] }));
        let mut raw = Raw::<H, T>::new(Counting { control: control.clone() })?;
        raw.disable_interrupts();
        control.lock().batching = true;
        let large_len = buffer_len(mtu);
        let mut rx_posted: Vec<Option<Box<[u8]>>> = (0..QUEUE_SIZE).map(|_| None).collect();
        // Post the receive buffers; one notify for all of them.
        for _ in 0..rx_slots(mtu) {
            let mut buffer = vec![0u8; large_len].into_boxed_slice();
            // SAFETY: the buffer is heap memory kept in `rx_posted` (never moved or
            // dropped) until the device returns it through `receive_complete`.
            let token = unsafe { raw.receive_begin(&mut buffer)? };
            rx_posted[token as usize] = Some(buffer);
        }
        control.lock().added |= 1 << QUEUE_RECEIVE;
        control.lock().flush();
        // Transmit buffers are made as needed and kept; a few of each to start with.
        let free_small = (0..32).map(|_| vec![0u8; SMALL_BUFFER].into_boxed_slice()).collect();
        let free_large = (0..4).map(|_| vec![0u8; large_len].into_boxed_slice()).collect();
        let in_flight = (0..QUEUE_SIZE).map(|_| None).collect();
        let rx_spare = vec![vec![0u8; large_len].into_boxed_slice()];
        Ok(VirtioNet {
            tx: TxSide { raw, free_small, free_large, large_len, in_flight, control: control.clone() },
            control,
            rx_posted,
            rx_current: None,
            rx_spare,
            mtu,
            checksums: true,
            frames_received: 0,
            frames_sent: 0,
            largest_received: 0,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.tx.raw.mac_address()
    }

    /// Whether smoltcp computes and checks IPv4 and TCP checksums (`NetConfig::checksums`).
    pub fn set_checksums(&mut self, on: bool) {
        self.checksums = on;
    }
}

impl<H: Hal, T: Transport> Nic for VirtioNet<H, T> {
    /// Issues the notifies held back during the poll: at most one per queue.
    fn flush(&mut self) {
        self.control.lock().flush();
    }

    fn transmit_pending(&mut self) -> bool {
        self.tx.reclaim();
        self.tx.in_flight.iter().any(Option::is_some)
    }

    /// Enables the receive queue's interrupt, then looks at its used ring: false if a
    /// frame is already there (it came before the device could see the flag, so it
    /// raised no interrupt). The device does the mirror image (publishes the used
    /// index, full barrier, reads the flags), so one of the two sees the other.
    fn arm_receive(&mut self) -> bool {
        self.control.lock().set_interrupts(QUEUE_RECEIVE, true);
        core::sync::atomic::fence(Ordering::SeqCst);
        self.tx.raw.poll_receive().is_none()
    }

    fn disarm_receive(&mut self) {
        self.control.lock().set_interrupts(QUEUE_RECEIVE, false);
    }
}

impl<H: Hal, T: Transport> TxSide<H, T> {
    fn reclaim(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(buffer) = self.in_flight.get_mut(token as usize).and_then(Option::take) else { break };
            // SAFETY: `buffer` is the one given to `transmit_begin` for this token.
            if unsafe { self.raw.transmit_complete(token, &buffer) }.is_err() {
                break;
            }
            if buffer.len() == SMALL_BUFFER {
                self.free_small.push(buffer);
            } else {
                self.free_large.push(buffer);
            }
        }
    }
}

pub struct VirtioRx<'a>(&'a [u8]);
pub struct VirtioTx<'a, H: Hal, T: Transport>(&'a mut TxSide<H, T>, &'a mut u64);

impl phy::RxToken for VirtioRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<H: Hal, T: Transport> phy::TxToken for VirtioTx<'_, H, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let side = self.0;
        let (pool, size) = if VIRTIO_HEADER_MAX + len <= SMALL_BUFFER { (&mut side.free_small, SMALL_BUFFER) } else { (&mut side.free_large, side.large_len) };
        let mut buffer = pool.pop().unwrap_or_else(|| vec![0u8; size].into_boxed_slice());
        let header = side.raw.fill_buffer_header(&mut buffer).unwrap_or(0);
        let end = (header + len).min(buffer.len());
        let result = f(&mut buffer[header..end]);
        // SAFETY: the buffer is kept in `in_flight` (not moved or dropped) until the
        // device hands it back through `transmit_complete` in `reclaim`.
        match unsafe { side.raw.transmit_begin(&buffer[..end]) } {
            Ok(token) => {
                side.in_flight[token as usize] = Some(buffer);
                side.control.lock().added |= 1 << QUEUE_TRANSMIT;
                *self.1 += 1;
            }
            Err(_) if buffer.len() == SMALL_BUFFER => side.free_small.push(buffer),
            Err(_) => side.free_large.push(buffer),
        }
        result
    }
}

impl<H: Hal, T: Transport> Device for VirtioNet<H, T> {
    type RxToken<'a>
        = VirtioRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = VirtioTx<'a, H, T>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(VirtioRx<'_>, VirtioTx<'_, H, T>)> {
        // smoltcp may answer a frame at once: make sure the answer has room *before*
        // taking the frame, or it would be lost (the frame stays in the used ring).
        self.tx.reclaim();
        if !self.tx.raw.can_send() {
            self.control.lock().flush();
            return None;
        }
        // smoltcp is done with the previous frame: its buffer becomes a spare.
        if let Some((buffer, _, _)) = self.rx_current.take() {
            self.rx_spare.push(buffer);
        }
        let token = self.tx.raw.poll_receive()?;
        let mut buffer = self.rx_posted.get_mut(token as usize).and_then(Option::take)?;
        // SAFETY: `buffer` is the one posted with this token.
        let (header, len) = unsafe { self.tx.raw.receive_complete(token, &mut buffer) }.ok()?;
        // A spare takes the received buffer's place in the ring at once; the frame is
        // handed to smoltcp where it lies.
        let large_len = self.tx.large_len;
        let mut spare = self.rx_spare.pop().unwrap_or_else(|| vec![0u8; large_len].into_boxed_slice());
        // SAFETY: as in `new`: kept in `rx_posted` until the device returns it.
        match unsafe { self.tx.raw.receive_begin(&mut spare) } {
            Ok(token) => {
                self.rx_posted[token as usize] = Some(spare);
                self.control.lock().added |= 1 << QUEUE_RECEIVE;
            }
            Err(_) => self.rx_spare.push(spare),
        }
        let end = (header + len).min(buffer.len());
        self.frames_received += 1;
        self.largest_received = self.largest_received.max(end - header);
        let (buffer, start, end) = self.rx_current.insert((buffer, header, end));
        Some((VirtioRx(&buffer[*start..*end]), VirtioTx(&mut self.tx, &mut self.frames_sent)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<VirtioTx<'_, H, T>> {
        self.tx.reclaim();
        if !self.tx.raw.can_send() {
            // Full: let the device see what is queued (one notify), try again next poll.
            self.control.lock().flush();
            return None;
        }
        Some(VirtioTx(&mut self.tx, &mut self.frames_sent))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // Ethernet's MTU here counts the 14-byte header; smoltcp's IP MTU, and so
        // the MSS each end announces, is this minus 14.
        caps.max_transmission_unit = ETHERNET_HEADER + self.mtu;
        // smoltcp caps an advertised window at this many full segments (a hack for
        // NICs with a few small receive buffers); the ring holds `rx_slots` whole frames.
        caps.max_burst_size = Some(rx_slots(self.mtu));
        if !self.checksums {
            caps.checksum = ChecksumCapabilities::ignored();
        }
        caps
    }
}

/// Finds the virtio-net device among microvm's virtio-mmio slots.
///
/// # Safety
/// The virtio-mmio window must be mapped (uncached, user-accessible), and no other
/// driver may own the network device's slot.
pub unsafe fn probe_mmio() -> Option<MmioTransport<'static>> {
    for slot in 0..MMIO_SLOTS {
        let address = MMIO_BASE + slot * MMIO_SLOT_SIZE;
        // Read the device id before making a transport: dropping an
        // `MmioTransport` resets its device, and other slots hold devices other
        // drivers own (the runtime's virtio console).
        // SAFETY: the caller guarantees the window is mapped; reading a slot's
        // magic and device id has no side effect.
        let (magic, id) = unsafe {
            (core::ptr::read_volatile(address as *const u32), core::ptr::read_volatile((address + 8) as *const u32))
        };
        OTHER_REGISTER_ACCESSES.fetch_add(2, Ordering::Relaxed);
        if magic != 0x7472_6976 || DeviceType::try_from(id).ok() != Some(DeviceType::Network) {
            continue;
        }
        let header = NonNull::new(address as *mut VirtIOHeader)?;
        DEVICE_ADDRESS.store(address, Ordering::Relaxed);
        // SAFETY: as above; the slot holds the network device, which only we drive.
        return unsafe { MmioTransport::new(header, MMIO_SLOT_SIZE) }.ok();
    }
    None
}

/// The network device's transport: virtio-mmio (microvm) or virtio-pci (q35).
pub enum NicTransport {
    Mmio(MmioTransport<'static>),
    Pci(PciNic),
}

macro_rules! each {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            NicTransport::Mmio($t) => $e,
            NicTransport::Pci($t) => $e,
        }
    };
}

impl Transport for NicTransport {
    fn device_type(&self) -> DeviceType {
        each!(self, t => t.device_type())
    }
    fn read_device_features(&mut self) -> u64 {
        each!(self, t => t.read_device_features())
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        each!(self, t => t.write_driver_features(driver_features))
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        each!(self, t => t.max_queue_size(queue))
    }
    fn notify(&mut self, queue: u16) {
        each!(self, t => t.notify(queue))
    }
    fn get_status(&self) -> DeviceStatus {
        each!(self, t => t.get_status())
    }
    fn set_status(&mut self, status: DeviceStatus) {
        each!(self, t => t.set_status(status))
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        each!(self, t => t.set_guest_page_size(guest_page_size))
    }
    fn requires_legacy_layout(&self) -> bool {
        each!(self, t => t.requires_legacy_layout())
    }
    fn queue_set(&mut self, queue: u16, size: u32, descriptors: PhysAddr, driver_area: PhysAddr, device_area: PhysAddr) {
        each!(self, t => t.queue_set(queue, size, descriptors, driver_area, device_area))
    }
    fn queue_unset(&mut self, queue: u16) {
        each!(self, t => t.queue_unset(queue))
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        each!(self, t => t.queue_used(queue))
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        each!(self, t => t.ack_interrupt())
    }
    fn read_config_generation(&self) -> u32 {
        each!(self, t => t.read_config_generation())
    }
    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<V> {
        each!(self, t => t.read_config_space(offset))
    }
    fn write_config_space<V: IntoBytes + Immutable>(&mut self, offset: usize, value: V) -> virtio_drivers::Result<()> {
        each!(self, t => t.write_config_space(offset, value))
    }
}

/// The VM's network device.
pub type VmNic<H> = VirtioNet<H, NicTransport>;
/// The network of this VM, shared by its ranks.
pub type VmNet<H> = Shared<VmNic<H>>;

/// Where a machine's PCI devices are (q35), for `start`.
#[derive(Clone, Copy, Debug)]
pub struct PciBus {
    /// Configuration space (ECAM) of bus 0, and the last bus it covers.
    pub ecam: usize,
    pub last_bus: u8,
    /// Device memory mapped uncached for ring 3: `[start, end)`.
    pub reach: (u64, u64),
    /// Part of `reach` for BARs the firmware left unassigned or out of reach.
    pub bar_pool: (u64, u64),
}

/// Starts the network: finds and sets up the virtio-net device (on `pci` when the
/// machine has PCI, q35; else among microvm's virtio-mmio slots), and builds the
/// node; connections open as the ranks poll. Call once per VM.
///
/// # Safety
/// As `probe_mmio` without `pci`; with it, as `pci::probe` (the ECAM and `reach`
/// mapped uncached for ring 3, `bar_pool` decoded by no other device). Call it once per VM.
pub unsafe fn start<H: Hal + 'static>(mut config: NetConfig, pci: Option<PciBus>, clock: Clock, fatal: Fatal) -> Result<Arc<VmNet<H>>, StartError> {
    let transport = match pci {
        Some(bus) => {
            // SAFETY: the caller's contract.
            let ecam = unsafe { crate::pci::Ecam::new(bus.ecam, bus.last_bus) };
            // SAFETY: the caller's contract.
            let nic = unsafe { crate::pci::probe::<H>(ecam, bus.reach, bus.bar_pool) }.map_err(StartError::Pci)?;
            NicTransport::Pci(nic.ok_or(StartError::NoDevice)?)
        }
        // SAFETY: the caller's contract.
        None => NicTransport::Mmio(unsafe { probe_mmio() }.ok_or(StartError::NoDevice)?),
    };
    let mut device = VirtioNet::<H, _>::new(transport, config.mtu).map_err(StartError::Device)?;
    device.set_checksums(config.checksums);
    let mac = device.mac();
    if config.mac == [0; 6] {
        config.mac = mac;
    } else if config.mac != mac {
        return Err(StartError::WrongMac { planned: config.mac, device: mac });
    }
    Ok(Shared::new(Node::new(config, device, clock), fatal))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport that only records notifies (the flush logic touches nothing else).
    #[derive(Default)]
    struct Recorder {
        notified: Vec<u16>,
    }

    impl Transport for Recorder {
        fn device_type(&self) -> DeviceType {
            DeviceType::Network
        }
        fn read_device_features(&mut self) -> u64 {
            0
        }
        fn write_driver_features(&mut self, _: u64) {}
        fn max_queue_size(&mut self, _: u16) -> u32 {
            QUEUE_SIZE as u32
        }
        fn notify(&mut self, queue: u16) {
            self.notified.push(queue);
        }
        fn get_status(&self) -> DeviceStatus {
            DeviceStatus::empty()
        }
        fn set_status(&mut self, _: DeviceStatus) {}
        fn set_guest_page_size(&mut self, _: u32) {}
        fn requires_legacy_layout(&self) -> bool {
            false
        }
        fn queue_set(&mut self, _: u16, _: u32, _: PhysAddr, _: PhysAddr, _: PhysAddr) {}
        fn queue_unset(&mut self, _: u16) {}
        fn queue_used(&mut self, _: u16) -> bool {
            true
        }
        fn ack_interrupt(&mut self) -> InterruptStatus {
            InterruptStatus::empty()
        }
        fn read_config_generation(&self) -> u32 {
            0
        }
        fn read_config_space<V: FromBytes + IntoBytes>(&self, _: usize) -> virtio_drivers::Result<V> {
            Err(virtio_drivers::Error::Unsupported)
        }
        fn write_config_space<V: IntoBytes + Immutable>(&mut self, _: usize, _: V) -> virtio_drivers::Result<()> {
            Err(virtio_drivers::Error::Unsupported)
        }
    }

    #[test]
    fn receive_buffers_hold_a_whole_frame_and_stay_within_their_memory() {
        use crate::node::{MAX_MTU, MIN_MTU};
        for mtu in [MIN_MTU, 1500, 9000, MAX_MTU] {
            // QEMU drops a frame longer than the buffer: header + Ethernet + IP packet.
            assert!(buffer_len(mtu) >= 12 + 14 + mtu);
            assert!(rx_slots(mtu) * buffer_len(mtu) <= RX_MEMORY.max(8 * buffer_len(mtu)));
            assert!((8..=QUEUE_SIZE / 2).contains(&rx_slots(mtu)));
        }
        // 64 KiB frames: 63 slots, 4 MiB; Ethernet frames: half the ring, as before.
        assert_eq!((rx_slots(MAX_MTU), rx_slots(1500)), (63, QUEUE_SIZE / 2));
        // The largest frame fits in what QEMU's network layer passes (NET_BUFSIZE).
        assert!(14 + MAX_MTU <= 69_632);
    }

    #[test]
    fn flush_notifies_each_queue_with_new_buffers_once_unless_the_device_is_busy() {
        // The used rings' flags words (the first field of each used ring).
        let rx_flags = Box::new(core::sync::atomic::AtomicU16::new(0));
        let tx_flags = Box::new(core::sync::atomic::AtomicU16::new(USED_F_NO_NOTIFY));
        let used_rings = [&*rx_flags as *const _ as usize, &*tx_flags as *const _ as usize];
        let mut control = Control { inner: Recorder::default(), batching: true, pending: 0, added: 0, used_rings, avail_rings: [0; 2] };
        // Nothing added: no exit.
        control.flush();
        assert!(control.inner.notified.is_empty());
        // Buffers on both queues; the device is busy with the transmit queue.
        control.added = 1 << QUEUE_RECEIVE | 1 << QUEUE_TRANSMIT;
        control.flush();
        assert_eq!(control.inner.notified, [QUEUE_RECEIVE]);
        // Once it is idle again, new transmit buffers are notified (one exit per flush).
        tx_flags.store(0, Ordering::SeqCst);
        control.added = 1 << QUEUE_TRANSMIT;
        control.flush();
        control.flush();
        assert_eq!(control.inner.notified, [QUEUE_RECEIVE, QUEUE_TRANSMIT]);
        // `virtio-drivers` asked when it added a buffer (it saw the flag clear then):
        // notified even if the device has suppressed notifies since.
        rx_flags.store(USED_F_NO_NOTIFY, Ordering::SeqCst);
        control.pending = 1 << QUEUE_RECEIVE;
        control.flush();
        assert_eq!(control.inner.notified, [QUEUE_RECEIVE, QUEUE_TRANSMIT, QUEUE_RECEIVE]);
        assert_eq!((control.pending, control.added), (0, 0));
    }

    #[test]
    fn receive_interrupts_are_a_flag_in_the_available_ring() {
        // The available rings' flags words (their first field); VIRTQ_AVAIL_F_NO_INTERRUPT set.
        let rx_flags = Box::new(core::sync::atomic::AtomicU16::new(1));
        let tx_flags = Box::new(core::sync::atomic::AtomicU16::new(1));
        let avail_rings = [&*rx_flags as *const _ as usize, &*tx_flags as *const _ as usize];
        let control = Control { inner: Recorder::default(), batching: true, pending: 0, added: 0, used_rings: [0; 2], avail_rings };
        control.set_interrupts(QUEUE_RECEIVE, true);
        assert_eq!((rx_flags.load(Ordering::SeqCst), tx_flags.load(Ordering::SeqCst)), (0, 1));
        control.set_interrupts(QUEUE_RECEIVE, false);
        assert_eq!(rx_flags.load(Ordering::SeqCst), 1);
        assert!(control.inner.notified.is_empty(), "no register access");
    }
}
