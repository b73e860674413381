//! virtio-net over PCI (q35; feature `virtio`): finding the device on bus 0, reading
//! where its virtio structures and MSI-X table are, putting its memory BARs where
//! ring 3 reaches them, and `PciNic`, the `virtio-drivers` PCI transport with the two
//! things the data path needs that it does not do.
//!
//! - Notify: `PciTransport::notify` selects the queue and reads its notify offset
//!   before the write (three register accesses, three VM exits under PVM). `PciNic`
//!   reads each queue's notify address once, when the queue is set up, and notifies
//!   with one write, as virtio-mmio does.
//! - Interrupt: MSI-X. The receive queue gets table entry 0 (set before the device
//!   is live: QEMU wires a vhost back-end's interrupts at DRIVER_OK), the transmit
//!   queue and configuration changes none. The entry stays masked until the glue
//!   routes it (`route_msix`). Each used-buffer notification is one message, an edge
//!   at the local APIC: nothing to acknowledge at the device, like virtio-mmio's line
//!   routed edge-triggered (legacy INTx would stay asserted until the ISR register is
//!   read, a VM exit per interrupt, and its IOAPIC input is known only from ACPI's AML).
//!
//! Configuration space is PCI Express's ECAM (the kernel maps it from the MCFG);
//! every access to it is counted with the driver's other register accesses.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, MemoryBarType, PciRoot,
};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError, VIRTIO_VENDOR_ID};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Hal, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// virtio-net's PCI device ids: transitional (QEMU's default) and modern.
const NET_DEVICE_IDS: [u16; 2] = [0x1000, 0x1041];
const PCI_CAP_ID_VENDOR: u8 = 0x09;
const PCI_CAP_ID_MSIX: u8 = 0x11;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// Header type register (offset 0x0C, byte 2): bit 7 = more than one function.
const MULTI_FUNCTION: u32 = 0x80 << 16;
const INVALID_READ: u32 = 0xFFFF_FFFF;
/// MSI-X message control (the high half of the capability's first word).
const MSIX_ENABLE: u32 = 1 << 31;
/// One MSI-X table entry: address (8 bytes), data, vector control.
const MSIX_ENTRY_BYTES: u64 = 16;
const MSIX_FUNCTION_MASK: u32 = 1 << 30;
/// Offsets in `virtio_pci_common_cfg` (virtio 1.x, 4.1.4.3).
const COMMON_QUEUE_SELECT: usize = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: usize = 0x1A;
const COMMON_QUEUE_NOTIFY_OFF: usize = 0x1E;
/// The receive queue's MSI-X table entry.
pub const RECEIVE_VECTOR: u16 = 0;
const NO_VECTOR: u16 = 0xFFFF;

/// Where a virtio structure lies: a BAR, an offset into it, a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

/// The device's MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msix {
    /// Offset of the capability in configuration space.
    pub capability: u8,
    /// Entries in the table.
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
}

/// What the capability list says about a virtio-pci device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub common: Region,
    pub notify: Region,
    pub notify_multiplier: u32,
    /// The ISR and device-specific structures (`PciTransport` maps them too).
    pub isr: Option<Region>,
    pub device: Option<Region>,
    pub msix: Option<Msix>,
}

impl Layout {
    /// Walks the capability list of `function` (`cam` reads the capabilities' bodies).
    pub fn read<C: ConfigurationAccess>(root: &PciRoot<C>, function: DeviceFunction, cam: &C) -> Option<Layout> {
        let (mut common, mut notify, mut notify_multiplier, mut msix) = (None, None, 0, None);
        let (mut isr, mut device) = (None, None);
        for capability in root.capabilities(function) {
            let at = capability.offset;
            match capability.id {
                PCI_CAP_ID_VENDOR => {
                    let (length, kind) = (capability.private_header as u8, (capability.private_header >> 8) as u8);
                    if length < 16 {
                        continue;
                    }
                    let region = Region {
                        bar: cam.read_word(function, at + 4) as u8,
                        offset: cam.read_word(function, at + 8),
                        length: cam.read_word(function, at + 12),
                    };
                    match kind {
                        VIRTIO_PCI_CAP_COMMON_CFG if common.is_none() => common = Some(region),
                        VIRTIO_PCI_CAP_NOTIFY_CFG if notify.is_none() && length >= 20 => {
                            notify = Some(region);
                            notify_multiplier = cam.read_word(function, at + 16);
                        }
                        VIRTIO_PCI_CAP_ISR_CFG if isr.is_none() => isr = Some(region),
                        VIRTIO_PCI_CAP_DEVICE_CFG if device.is_none() => device = Some(region),
                        _ => {}
                    }
                }
                PCI_CAP_ID_MSIX if msix.is_none() => {
                    let table = cam.read_word(function, at + 4);
                    msix = Some(Msix {
                        capability: at,
                        table_size: (capability.private_header & 0x7FF) + 1,
                        table_bar: (table & 7) as u8,
                        table_offset: table & !7,
                    });
                }
                _ => {}
            }
        }
        Some(Layout { common: common?, notify: notify?, notify_multiplier, isr, device, msix })
    }

    /// The BARs the driver (with `PciTransport`) touches.
    fn bars(&self) -> impl Iterator<Item = u8> {
        self.extents().map(|(bar, _)| bar)
    }

    /// Each structure the driver touches as (BAR, end offset in it): the virtio
    /// structures and the MSI-X table.
    fn extents(&self) -> impl Iterator<Item = (u8, u64)> {
        let structures = [Some(self.common), Some(self.notify), self.isr, self.device];
        let end = |r: Region| (r.bar, r.offset as u64 + r.length as u64);
        structures.into_iter().flatten().map(end).chain(
            self.msix.map(|m| (m.table_bar, m.table_offset as u64 + MSIX_ENTRY_BYTES * m.table_size as u64)),
        )
    }
}

/// The first virtio-net function on bus 0: one read per device, a few more for
/// a multi-function device.
pub fn find_virtio_net<C: ConfigurationAccess>(cam: &C) -> Option<DeviceFunction> {
    for device in 0..32 {
        let first = DeviceFunction { bus: 0, device, function: 0 };
        let id = cam.read_word(first, 0);
        if id == INVALID_READ {
            continue;
        }
        let functions = if cam.read_word(first, 0x0C) & MULTI_FUNCTION != 0 { 8 } else { 1 };
        for function in 0..functions {
            let candidate = DeviceFunction { function, ..first };
            let id = if function == 0 { id } else { cam.read_word(candidate, 0) };
            if id as u16 == VIRTIO_VENDOR_ID && NET_DEVICE_IDS.contains(&((id >> 16) as u16)) {
                return Some(candidate);
            }
        }
    }
    None
}

/// Why a PCI device could not be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PciError {
    /// A virtio structure or the MSI-X table is in an I/O BAR, or a BAR is invalid.
    BadBar(u8),
    /// No room left for a BAR in the pool.
    NoRoom { bar: u8, size: u64 },
    /// The capability list lacks virtio's common or notify structure.
    NotVirtio,
    Transport(VirtioPciError),
}

/// Makes every BAR the driver uses a memory BAR inside `reach` (what ring 3 has
/// mapped), placing the ones the firmware left unassigned (or put elsewhere, e.g.
/// above 4 GiB) in `pool`, naturally aligned; then enables memory decoding and
/// bus mastering (the device's DMA: QEMU drops it without). Returns each BAR's address.
pub fn place_bars<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    function: DeviceFunction,
    layout: &Layout,
    reach: (u64, u64),
    pool: (u64, u64),
) -> Result<[u64; 6], PciError> {
    let (_, command) = root.get_status_command(function);
    // Each BAR used: a memory BAR whose size holds every structure the driver reads in it.
    let mut found: [Option<(MemoryBarType, u64, u64)>; 6] = [None; 6];
    for bar in layout.bars() {
        if bar >= 6 {
            return Err(PciError::BadBar(bar));
        }
        if found[bar as usize].is_some() {
            continue;
        }
        let Ok(Some(BarInfo::Memory { address_type, address, size, .. })) = root.bar_info(function, bar) else {
            return Err(PciError::BadBar(bar));
        };
        if size == 0 || !size.is_power_of_two() {
            return Err(PciError::BadBar(bar));
        }
        found[bar as usize] = Some((address_type, address, size));
    }
    if let Some((bar, _)) = layout.extents().find(|&(bar, end)| found[bar as usize].is_none_or(|(_, _, size)| end > size)) {
        return Err(PciError::BadBar(bar));
    }
    let reachable = |address: u64, size: u64| address != 0 && address >= reach.0 && address.checked_add(size).is_some_and(|end| end <= reach.1);
    // BARs that stay where the firmware put them; new ones must not overlap them.
    let mut addresses = [0u64; 6];
    for (bar, info) in found.iter().enumerate() {
        if let Some((_, address, size)) = *info {
            if reachable(address, size) {
                addresses[bar] = address;
            }
        }
    }
    let kept: [(u64, u64); 6] = core::array::from_fn(|bar| match found[bar] {
        Some((_, _, size)) if addresses[bar] != 0 => (addresses[bar], addresses[bar] + size),
        _ => (0, 0),
    });
    let mut next_free = pool.0;
    let mut decoding_off = false;
    for bar in layout.bars().map(usize::from) {
        let Some((address_type, _, size)) = found[bar] else { continue };
        if addresses[bar] != 0 {
            continue;
        }
        let mut start = next_free.next_multiple_of(size.max(4096));
        while let Some(&(_, kept_end)) = kept.iter().find(|&&(from, to)| from < to && from < start + size && start < to) {
            start = kept_end.next_multiple_of(size.max(4096));
        }
        if start.checked_add(size).is_none_or(|end| end > pool.1) {
            return Err(PciError::NoRoom { bar: bar as u8, size });
        }
        if !decoding_off {
            // Never decode a half-written BAR.
            root.set_command(function, command - Command::MEMORY_SPACE);
            decoding_off = true;
        }
        match address_type {
            MemoryBarType::Width32 => root.set_bar_32(function, bar as u8, start as u32),
            MemoryBarType::Width64 => root.set_bar_64(function, bar as u8, start),
            MemoryBarType::Below1MiB => return Err(PciError::BadBar(bar as u8)),
        }
        addresses[bar] = start;
        next_free = start + size;
    }
    root.set_command(function, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
    Ok(addresses)
}

/// Address of the MSI-X table entry of the receive queue (0: none), for `route_msix`.
static RECEIVE_MSIX_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// Whether `probe` set up an MSI-X entry for the receive queue.
pub fn has_msix() -> bool {
    RECEIVE_MSIX_ENTRY.load(Ordering::Acquire) != 0
}

/// Points the receive queue's MSI-X entry at `address`/`data` (an MSI message: the
/// runtime's `msi_message`) and unmasks it: used-buffer notifications of the
/// receive queue, while `Nic::arm_receive` asks for them, then interrupt the cores
/// it names. Five register writes. False when the device has no MSI-X.
pub fn route_msix(address: u64, data: u32) -> bool {
    let entry = RECEIVE_MSIX_ENTRY.load(Ordering::Acquire);
    if entry == 0 {
        return false;
    }
    crate::vm::count_register_accesses(5);
    // SAFETY: `entry` is the receive queue's 16-byte MSI-X table entry, inside a BAR
    // that `probe` placed where ring 3 has device memory mapped (uncached); only
    // `probe` and this function write it. Masked while its message is rewritten
    // (a device may latch a half-written one), unmasked last.
    unsafe {
        let words = entry as *mut u32;
        core::ptr::write_volatile(words.add(3), 1);
        core::ptr::write_volatile(words, address as u32);
        core::ptr::write_volatile(words.add(1), (address >> 32) as u32);
        core::ptr::write_volatile(words.add(2), data);
        core::ptr::write_volatile(words.add(3), 0);
    }
    true
}

/// The `virtio-drivers` PCI transport with notify addresses cached per queue and
/// the receive queue's MSI-X vector set up (see the module docs).
pub struct PciNic {
    inner: PciTransport,
    /// `virtio_pci_common_cfg`, mapped for ring 3.
    common: usize,
    /// The notify structure and its multiplier.
    notify: usize,
    notify_length: usize,
    notify_multiplier: usize,
    /// Each queue's notify register (0: not set up).
    notify_registers: [usize; 2],
    has_msix: bool,
}

impl PciNic {
    fn common_write_u16(&mut self, offset: usize, value: u16) {
        crate::vm::count_register_accesses(1);
        // SAFETY: `common` is the device's common configuration structure (at least
        // 0x38 bytes, checked when probing), mapped uncached for ring 3; the offsets
        // used are 2-aligned fields of it.
        unsafe { core::ptr::write_volatile((self.common + offset) as *mut u16, value) }
    }

    fn common_read_u16(&self, offset: usize) -> u16 {
        crate::vm::count_register_accesses(1);
        // SAFETY: as in `common_write_u16`.
        unsafe { core::ptr::read_volatile((self.common + offset) as *const u16) }
    }
}

impl Transport for PciNic {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.inner.write_driver_features(driver_features)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    /// One write to the queue's notify register, found when the queue was set up.
    fn notify(&mut self, queue: u16) {
        match self.notify_registers.get(queue as usize).copied().filter(|r| *r != 0) {
            // SAFETY: a 2-aligned register inside the notify structure (checked in
            // `queue_set`), mapped uncached for ring 3.
            Some(register) => unsafe { core::ptr::write_volatile(register as *mut u16, queue) },
            None => self.inner.notify(queue),
        }
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(&mut self, queue: u16, size: u32, descriptors: PhysAddr, driver_area: PhysAddr, device_area: PhysAddr) {
        // The receive queue's vector before the queue (and the device) goes live.
        if self.has_msix && queue == crate::vm::QUEUE_RECEIVE {
            self.common_write_u16(COMMON_QUEUE_SELECT, queue);
            self.common_write_u16(COMMON_QUEUE_MSIX_VECTOR, RECEIVE_VECTOR);
            if self.common_read_u16(COMMON_QUEUE_MSIX_VECTOR) == NO_VECTOR {
                // The device refused it: no interrupt (the glue then spins).
                self.has_msix = false;
                RECEIVE_MSIX_ENTRY.store(0, Ordering::Release);
            }
        }
        self.inner.queue_set(queue, size, descriptors, driver_area, device_area);
        // `queue_set` left the queue selected.
        let offset = self.common_read_u16(COMMON_QUEUE_NOTIFY_OFF) as usize * self.notify_multiplier;
        if let Some(slot) = self.notify_registers.get_mut(queue as usize) {
            *slot = if offset + 2 <= self.notify_length && offset.is_multiple_of(2) { self.notify + offset } else { 0 };
        }
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<V> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<V: IntoBytes + Immutable>(&mut self, offset: usize, value: V) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

/// PCI Express's memory-mapped configuration space (ECAM): function `f`'s 4 KiB at
/// `base + (bus << 20 | device << 15 | function << 12)`, buses `0..=last_bus`.
#[derive(Clone, Copy, Debug)]
pub struct Ecam {
    base: usize,
    last_bus: u8,
}

impl Ecam {
    /// # Safety
    /// The configuration space of buses `0..=last_bus` must be mapped (uncached)
    /// at `base` for as long as the `Ecam` and its copies are used.
    pub unsafe fn new(base: usize, last_bus: u8) -> Ecam {
        Ecam { base, last_bus }
    }

    fn register(&self, function: DeviceFunction, offset: u8) -> Option<*mut u32> {
        let inside = function.bus <= self.last_bus && function.device < 32 && function.function < 8 && offset.is_multiple_of(4);
        let at = (function.bus as usize) << 20 | (function.device as usize) << 15 | (function.function as usize) << 12;
        inside.then(|| (self.base + at + offset as usize) as *mut u32)
    }
}

impl ConfigurationAccess for Ecam {
    fn read_word(&self, function: DeviceFunction, offset: u8) -> u32 {
        crate::vm::count_register_accesses(1);
        match self.register(function, offset) {
            // SAFETY: an aligned register inside the mapped configuration space (`new`).
            Some(register) => unsafe { core::ptr::read_volatile(register) },
            None => INVALID_READ,
        }
    }
    fn write_word(&mut self, function: DeviceFunction, offset: u8, data: u32) {
        crate::vm::count_register_accesses(1);
        if let Some(register) = self.register(function, offset) {
            // SAFETY: as in `read_word`.
            unsafe { core::ptr::write_volatile(register, data) }
        }
    }
    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}

/// Finds the virtio-net device on bus 0 and sets it up for a ring-3 driver:
/// BARs placed and decoded, bus mastering on, MSI-X enabled with the receive
/// queue's entry masked. `Ok(None)`: no virtio-net device.
///
/// # Safety
/// `reach` must be device memory mapped uncached for ring 3, and `pool` a part of
/// it no other device decodes; no other driver may own the device.
pub unsafe fn probe<H: Hal>(mut ecam: Ecam, reach: (u64, u64), pool: (u64, u64)) -> Result<Option<PciNic>, PciError> {
    let Some(function) = find_virtio_net(&ecam) else { return Ok(None) };
    let mut root = PciRoot::new(ecam);
    let layout = Layout::read(&root, function, &ecam).ok_or(PciError::NotVirtio)?;
    if layout.common.length < 0x38 {
        return Err(PciError::NotVirtio);
    }
    let bars = place_bars(&mut root, function, &layout, reach, pool)?;
    let base = |region: &Region| bars.get(region.bar as usize).copied().unwrap_or(0) + region.offset as u64;
    let (common, notify) = (base(&layout.common) as usize, base(&layout.notify) as usize);
    let msix_entry = layout.msix.map(|msix| {
        let entry = bars[msix.table_bar as usize] + msix.table_offset as u64;
        crate::vm::count_register_accesses(1);
        // SAFETY: the vector control word of the MSI-X table's first entry, in a BAR
        // now inside `reach` (mapped uncached for ring 3, the caller's contract):
        // masked until `route_msix`.
        unsafe { core::ptr::write_volatile((entry + 12) as *mut u32, 1) };
        let control = ecam.read_word(function, msix.capability);
        ecam.write_word(function, msix.capability, (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK);
        entry as usize
    });
    let inner = PciTransport::new::<H, _>(&mut root, function).map_err(PciError::Transport)?;
    RECEIVE_MSIX_ENTRY.store(msix_entry.unwrap_or(0), Ordering::Release);
    Ok(Some(PciNic {
        inner,
        common,
        notify,
        notify_length: layout.notify.length as usize,
        notify_multiplier: layout.notify_multiplier as usize,
        notify_registers: [0; 2],
        has_msix: msix_entry.is_some(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// One PCI function's configuration space (256 bytes), with BARs that behave as
    /// hardware does when sized: only the address bits above their size stick.
    #[derive(Clone)]
    struct FakeFunction {
        location: DeviceFunction,
        words: [u32; 64],
        /// Per BAR register: the bits software may write, and the read-only type bits.
        writable: [u32; 6],
    }

    impl FakeFunction {
        fn new(device: u8, vendor: u16, id: u16) -> FakeFunction {
            let mut words = [0; 64];
            words[0] = (id as u32) << 16 | vendor as u32;
            FakeFunction { location: DeviceFunction { bus: 0, device, function: 0 }, words, writable: [0; 6] }
        }

        /// A 32-bit (or 64-bit, taking two registers) memory BAR of `size` bytes at `address`.
        fn bar(mut self, index: usize, size: u64, address: u64, wide: bool) -> FakeFunction {
            let mask = !(size - 1);
            let kind = if wide { 0b100 } else { 0 };
            self.writable[index] = mask as u32 & !0xF;
            self.words[4 + index] = (address as u32 & mask as u32) | kind;
            if wide {
                self.writable[index + 1] = (mask >> 32) as u32;
                self.words[4 + index + 1] = (address >> 32) as u32;
            }
            self
        }

        /// Appends capabilities at 0x40, 0x54, ... (each `body` word after the header).
        fn capabilities(mut self, list: &[(u8, Vec<u32>)]) -> FakeFunction {
            self.words[1] |= 1 << 20; // status: capabilities list
            self.words[0x34 / 4] = 0x40;
            let mut at = 0x40;
            for (i, (id, body)) in list.iter().enumerate() {
                let next = if i + 1 == list.len() { 0 } else { at + 4 + 4 * body.len() as u32 };
                let header = self.words[at as usize / 4] & 0xFFFF_0000;
                self.words[at as usize / 4] = header | next << 8 | *id as u32;
                for (k, word) in body.iter().enumerate() {
                    self.words[at as usize / 4 + 1 + k] = *word;
                }
                at = next;
            }
            self
        }

        /// The 16-bit field after a capability's id and next pointer.
        fn private_header(mut self, capability: usize, value: u16) -> FakeFunction {
            self.words[capability / 4] |= (value as u32) << 16;
            self
        }
    }

    #[derive(Clone)]
    struct FakeBus {
        functions: Vec<FakeFunction>,
        reads: core::cell::Cell<usize>,
    }

    impl FakeBus {
        fn function(&self, location: DeviceFunction) -> Option<&FakeFunction> {
            self.functions.iter().find(|f| f.location == location)
        }
    }

    impl ConfigurationAccess for FakeBus {
        fn read_word(&self, location: DeviceFunction, offset: u8) -> u32 {
            self.reads.set(self.reads.get() + 1);
            self.function(location).map_or(INVALID_READ, |f| f.words[offset as usize / 4])
        }
        fn write_word(&mut self, location: DeviceFunction, offset: u8, data: u32) {
            let Some(f) = self.functions.iter_mut().find(|f| f.location == location) else { return };
            let word = offset as usize / 4;
            match word {
                4..=9 => {
                    let writable = f.writable[word - 4];
                    f.words[word] = (data & writable) | (f.words[word] & !writable & 0xF);
                }
                _ => f.words[word] = data,
            }
        }
        unsafe fn unsafe_clone(&self) -> Self {
            self.clone()
        }
    }

    /// A virtio-net function as QEMU makes it: BAR 1 (MSI-X table, 4 KiB), BAR 4
    /// (64-bit, 16 KiB: common, ISR, device and notify structures).
    fn virtio_net(bar1: u64, bar4: u64) -> FakeFunction {
        // Vendor capabilities: BAR, offset, length (cfg_type and length in the private header).
        let vendor = |bar: u32, offset: u32, length: u32| (PCI_CAP_ID_VENDOR, vec![bar, offset, length]);
        let (common, isr, device) = (vendor(4, 0, 0x1000), vendor(4, 0x1000, 0x1000), vendor(4, 0x2000, 0x1000));
        let notify = (PCI_CAP_ID_VENDOR, vec![4, 0x3000, 0x1000, 4]); // + notify_off_multiplier
        FakeFunction::new(1, VIRTIO_VENDOR_ID, 0x1000)
            .bar(1, 0x1000, bar1, false)
            .bar(4, 0x4000, bar4, true)
            .capabilities(&[(PCI_CAP_ID_MSIX, vec![1, 0x801]), common, isr, device, notify])
            // MSI-X: 3 entries; vendor capabilities: length and cfg_type.
            .private_header(0x40, 2)
            .private_header(0x4C, 16 | 1 << 8)
            .private_header(0x5C, 16 | 3 << 8)
            .private_header(0x6C, 16 | 4 << 8)
            .private_header(0x7C, 20 | 2 << 8)
    }

    const REACH: (u64, u64) = (0xFEA0_0000, 0xFEC0_0000);
    const POOL: (u64, u64) = (0xFEA0_0000, 0xFEB0_0000);

    #[test]
    fn finds_virtio_net_past_other_devices_reading_one_word_per_empty_slot() {
        let bus = FakeBus {
            functions: vec![FakeFunction::new(0, 0x8086, 0x29C0), FakeFunction::new(2, VIRTIO_VENDOR_ID, 0x1003), virtio_net(0, 0)]
                .into_iter()
                .map(|mut f| {
                    if f.location.device == 1 {
                        f.location.device = 5;
                    }
                    f
                })
                .collect(),
            reads: Default::default(),
        };
        let found = find_virtio_net(&bus).unwrap();
        assert_eq!((found.bus, found.device, found.function), (0, 5, 0));
        // Slots 0..=5: an id each, a header type for the three present ones.
        assert_eq!(bus.reads.get(), 6 + 3);
        let none = FakeBus { functions: vec![FakeFunction::new(0, 0x8086, 0x29C0)], reads: Default::default() };
        assert_eq!(find_virtio_net(&none), None);
    }

    #[test]
    fn the_capability_walk_finds_the_virtio_structures_and_msix() {
        let bus = FakeBus { functions: vec![virtio_net(0xFEBC_0000, 0xFEBF_C000)], reads: Default::default() };
        let function = find_virtio_net(&bus).unwrap();
        let root = PciRoot::new(bus.clone());
        let layout = Layout::read(&root, function, &bus).unwrap();
        assert_eq!(layout.common, Region { bar: 4, offset: 0, length: 0x1000 });
        assert_eq!(layout.notify, Region { bar: 4, offset: 0x3000, length: 0x1000 });
        assert_eq!(layout.notify_multiplier, 4);
        assert_eq!(layout.isr, Some(Region { bar: 4, offset: 0x1000, length: 0x1000 }));
        assert_eq!(layout.device, Some(Region { bar: 4, offset: 0x2000, length: 0x1000 }));
        assert_eq!(layout.msix, Some(Msix { capability: 0x40, table_size: 3, table_bar: 1, table_offset: 0 }));
        assert_eq!(layout.bars().collect::<Vec<_>>(), [4, 4, 4, 4, 1]);
        // Without a notify structure it is no virtio-pci device this driver can use.
        let mut broken = virtio_net(0, 0);
        broken.words[0x7C / 4] = (broken.words[0x7C / 4] & 0xFF00_FFFF) | 9 << 24;
        let bus = FakeBus { functions: vec![broken], reads: Default::default() };
        assert_eq!(Layout::read(&PciRoot::new(bus.clone()), function, &bus), None);
    }

    /// A bus holding one virtio-net function with BARs 1 and 4 at these addresses, and
    /// the layout its capabilities describe.
    fn one_virtio_net(bar1: u64, bar4: u64) -> (DeviceFunction, PciRoot<FakeBus>, Layout) {
        let bus = FakeBus { functions: vec![virtio_net(bar1, bar4)], reads: Default::default() };
        let function = find_virtio_net(&bus).unwrap();
        let root = PciRoot::new(bus.clone());
        let layout = Layout::read(&root, function, &bus).unwrap();
        (function, root, layout)
    }

    #[test]
    fn bars_the_firmware_assigned_in_reach_stay_and_decoding_and_bus_mastering_go_on() {
        let (function, mut root, layout) = one_virtio_net(0xFEBC_0000, 0xFEBF_C000);
        let bars = place_bars(&mut root, function, &layout, REACH, POOL).unwrap();
        assert_eq!((bars[1], bars[4]), (0xFEBC_0000, 0xFEBF_C000));
        let (_, command) = root.get_status_command(function);
        assert!(command.contains(Command::MEMORY_SPACE | Command::BUS_MASTER));
        assert_eq!(root.bar_info(function, 4).unwrap().unwrap().memory_address_size(), Some((0xFEBF_C000, 0x4000)));
    }

    #[test]
    fn unassigned_or_unreachable_bars_are_placed_in_the_pool_aligned() {
        // BAR 1 unassigned, BAR 4 above 4 GiB (out of ring 3's reach).
        let (function, mut root, layout) = one_virtio_net(0, 0x8_0000_0000);
        let bars = place_bars(&mut root, function, &layout, REACH, POOL).unwrap();
        // BAR 4 (first used) at the pool's start, BAR 1 after it.
        assert_eq!((bars[4], bars[1]), (0xFEA0_0000, 0xFEA0_4000));
        for (bar, address, size) in [(4, 0xFEA0_0000, 0x4000), (1, 0xFEA0_4000, 0x1000)] {
            assert_eq!(root.bar_info(function, bar).unwrap().unwrap().memory_address_size(), Some((address, size)), "BAR {bar}");
        }
        let (_, command) = root.get_status_command(function);
        assert!(command.contains(Command::MEMORY_SPACE | Command::BUS_MASTER));
        // A pool too small for the 16 KiB BAR.
        let bus = FakeBus { functions: vec![virtio_net(0, 0)], reads: Default::default() };
        let mut root = PciRoot::new(bus.clone());
        assert_eq!(place_bars(&mut root, function, &layout, REACH, (0xFEA0_0000, 0xFEA0_2000)), Err(PciError::NoRoom { bar: 4, size: 0x4000 }));
    }

    #[test]
    fn a_new_bar_skips_one_the_firmware_left_in_the_pool() {
        // BAR 4 kept at the pool's start, BAR 1 unassigned: it goes after BAR 4.
        let (function, mut root, layout) = one_virtio_net(0, 0xFEA0_0000);
        let bars = place_bars(&mut root, function, &layout, REACH, POOL).unwrap();
        assert_eq!((bars[4], bars[1]), (0xFEA0_0000, 0xFEA0_4000));
    }

    #[test]
    fn a_structure_outside_its_bar_or_a_reserved_bar_is_refused() {
        let (function, mut root, layout) = one_virtio_net(0xFEBC_0000, 0xFEBF_C000);
        let mut past_the_end = layout;
        past_the_end.common.offset = 0x4000 - 8;
        assert_eq!(place_bars(&mut root, function, &past_the_end, REACH, POOL), Err(PciError::BadBar(past_the_end.common.bar)));
        let mut reserved = layout;
        reserved.notify.bar = 6;
        assert_eq!(place_bars(&mut root, function, &reserved, REACH, POOL), Err(PciError::BadBar(6)));
    }
}
