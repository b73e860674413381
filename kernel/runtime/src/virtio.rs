//! Ring-3 access to virtio devices: the identity-mapped `Hal` for the
//! `virtio-drivers` crate, the virtio-mmio probe (microvm), where PCI's
//! configuration space is (q35), and how their interrupts reach the cores. Every MMIO access
//! from ring 3 is a VM exit (85–100 µs under KVM PVM): drivers built on this
//! touch registers only to set up and to notify.

use core::alloc::Layout;
use core::ptr::NonNull;

use toro_abi::layout::{PAGE_SIZE, VIRTIO_MMIO_BASE};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Guest memory is identity mapped and the heap is ordinary RAM, so a
/// pointer is the device's address of the same byte.
pub struct IdentityHal;

// SAFETY: dma_alloc returns zeroed, page-aligned, exclusively owned heap
// memory; physical == virtual for all RAM and for the MMIO window.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages * PAGE_SIZE as usize, PAGE_SIZE as usize).expect("DMA layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let p = NonNull::new(p).expect("out of memory for a virtio queue");
        (p.as_ptr() as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = Layout::from_size_align(pages * PAGE_SIZE as usize, PAGE_SIZE as usize).expect("DMA layout");
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

/// microvm has 24 virtio-mmio transports of 0x200 bytes, filled from the
/// top slot down.
const SLOTS: usize = 24;
const SLOT_SIZE: usize = 0x200;
const MAGIC: u32 = 0x7472_6976;

/// The `n`-th device of `kind` (counting from the top slot), if any.
/// Reads two registers per slot and stops at the first empty transport.
pub fn find_mmio(kind: DeviceType, n: usize) -> Option<MmioTransport<'static>> {
    let mut seen = 0;
    for slot in (0..SLOTS).rev() {
        let base = VIRTIO_MMIO_BASE as usize + slot * SLOT_SIZE;
        // SAFETY: the virtio-mmio window is mapped (uncached) for ring 3;
        // reading a transport's magic and device id has no side effect.
        let (magic, id) = unsafe {
            (core::ptr::read_volatile(base as *const u32), core::ptr::read_volatile((base + 8) as *const u32))
        };
        if magic != MAGIC || id == 0 {
            break;
        }
        if DeviceType::try_from(id).ok() == Some(kind) {
            if seen == n {
                // SAFETY: a valid transport region of SLOT_SIZE bytes, mapped for the program's life.
                return unsafe { MmioTransport::new(NonNull::new(base as *mut VirtIOHeader)?, SLOT_SIZE).ok() };
            }
            seen += 1;
        }
    }
    None
}

/// Routes the interrupt of the virtio-mmio transport at `address` to `core`
/// (`None`: every core), so that the device's used-buffer notifications end
/// halts (see `waiters::wait_until`). False when the machine named no
/// interrupt for it (QEMU names them on the command line for a microvm
/// without ACPI) or the kernel refused it.
pub fn route_interrupt(address: usize, core: Option<usize>) -> bool {
    match crate::cmdline().virtio_mmio_irq(address as u64) {
        Some(gsi) => crate::arch::route_irq(gsi, core),
        None => false,
    }
}

/// PCI Express configuration space of bus 0 (q35; the kernel found it in the ACPI
/// MCFG and mapped it uncached for ring 3), and the last bus it covers; `None` on a
/// machine without PCI (microvm).
pub fn pci_ecam() -> Option<(usize, u8)> {
    let info = crate::boot_info();
    (info.pci_ecam != 0).then(|| (info.pci_ecam as usize, info.pci_last_bus.min(255) as u8))
}

/// The MSI message (address, data) that interrupts `core` (`None`: every core) with
/// the device vector the kernel acknowledges like a routed IOAPIC input: fixed
/// delivery, edge, physical destination (0xFF: broadcast). A device that sends it
/// at every event it should be signalled for (virtio-pci with MSI-X sends one per
/// used-buffer notification) ends the halts as `route_interrupt` does, with no
/// trap and nothing to acknowledge at the device. `None` when the core's APIC id
/// does not fit an MSI address (above 254).
pub fn msi_message(core: Option<usize>) -> Option<(u64, u32)> {
    let destination = match core {
        None => 0xFF,
        Some(core) if core < crate::core_count() => crate::boot_info().apic_ids[core],
        Some(_) => return None,
    };
    if destination > 0xFF || (core.is_some() && destination == 0xFF) {
        return None;
    }
    Some((toro_abi::layout::LAPIC_BASE | (destination as u64) << 12, toro_abi::DEVICE_VECTOR as u32))
}
