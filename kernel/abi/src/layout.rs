//! Guest-physical memory layout. Memory is identity mapped (virtual =
//! physical) with 2 MiB pages, except the first 2 MiB and the stack arena,
//! which use 4 KiB pages (null page and stack guard pages absent).
//!
//! ```text
//! 0x0000_0000  null page (absent), low memory: AP start page, PVH start info
//! 0x0010_0000  kernel image, kernel stacks, GDT/TSS/IDT, page tables  (ring 0 only)
//! 0x0040_0000  application image (text, data, bss)                     (ring 3)
//! 0x0100_0000  thread-stack arena: 128 slots of 256 KiB, guard below each
//! 0x0300_0000  heap: per-core pools up to the end of RAM
//! 0xFE00_0000  device MMIO (0xFEA0_0000..0xFEC0_0000 user-accessible, APIC ring 0)
//! ```
//! On q35 the PCI Express configuration space (at the MCFG's address,
//! 0xB000_0000) is also mapped uncached for ring 3.

pub const PAGE_SIZE: u64 = 4096;
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

pub const KERNEL_BASE: u64 = 0x0010_0000;
pub const APP_BASE: u64 = 0x0040_0000;
pub const APP_LIMIT: u64 = 0x0100_0000;

pub const STACK_ARENA: u64 = 0x0100_0000;
pub const STACK_SLOT_SIZE: u64 = 256 << 10;
pub const STACK_SLOTS: u64 = 128;
pub const STACK_ARENA_END: u64 = STACK_ARENA + STACK_SLOT_SIZE * STACK_SLOTS;

pub const HEAP_BASE: u64 = STACK_ARENA_END;
/// RAM is mapped up to here; the launcher never asks for more below 4 GiB.
pub const RAM_MAP_LIMIT: u64 = 3 << 30;
/// Smallest RAM a VM may have: the fixed regions plus 16 MiB of heap.
pub const MIN_RAM: u64 = HEAP_BASE + (16 << 20);

pub const MMIO_BASE: u64 = 0xFE00_0000;
/// microvm's virtio-mmio window (ring 3 drivers map it).
pub const VIRTIO_MMIO_BASE: u64 = 0xFEB0_0000;
pub const VIRTIO_MMIO_END: u64 = 0xFEC0_0000;
/// Device memory ring 3 reaches (one 2 MiB page): microvm's virtio-mmio window and,
/// on q35, the PCI memory BARs: SeaBIOS assigns them top-down from 0xFEC0_0000 (the
/// virtio-net device's at 0xFEBC_0000 and 0xFEBF_C000); qboot leaves them unassigned
/// and the driver places them in [`PCI_BAR_POOL`].
pub const USER_MMIO_BASE: u64 = 0xFEA0_0000;
pub const USER_MMIO_END: u64 = 0xFEC0_0000;
/// Where the ring-3 drivers place a PCI memory BAR the firmware left unassigned
/// or put out of ring 3's reach: the lower half of the ring-3 window, which
/// SeaBIOS's top-down assignment does not reach with a few devices.
pub const PCI_BAR_POOL: u64 = USER_MMIO_BASE;
pub const PCI_BAR_POOL_END: u64 = VIRTIO_MMIO_BASE;
/// The IOAPIC (microvm and q35; ring 0 only).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
pub const LAPIC_BASE: u64 = 0xFEE0_0000;

// The regions are ordered and aligned (checked when this crate compiles).
const _: () = {
    assert!(KERNEL_BASE < APP_BASE && APP_BASE < APP_LIMIT);
    assert!(APP_LIMIT == STACK_ARENA);
    assert!(STACK_ARENA.is_multiple_of(LARGE_PAGE_SIZE) && STACK_ARENA_END.is_multiple_of(LARGE_PAGE_SIZE));
    assert!(HEAP_BASE.is_multiple_of(LARGE_PAGE_SIZE) && STACK_SLOT_SIZE.is_multiple_of(PAGE_SIZE));
    assert!(MIN_RAM < RAM_MAP_LIMIT);
    assert!(USER_MMIO_BASE.is_multiple_of(LARGE_PAGE_SIZE) && USER_MMIO_END - USER_MMIO_BASE == LARGE_PAGE_SIZE);
    assert!(USER_MMIO_BASE <= VIRTIO_MMIO_BASE && VIRTIO_MMIO_END <= USER_MMIO_END && USER_MMIO_END <= IOAPIC_BASE);
};

/// Which stack slot an address inside the arena belongs to.
pub fn stack_slot_of(addr: u64) -> Option<u64> {
    if (STACK_ARENA..STACK_ARENA_END).contains(&addr) {
        Some((addr - STACK_ARENA) / STACK_SLOT_SIZE)
    } else {
        None
    }
}

/// Whether `[addr, addr+len)` lies wholly in memory ring 3 may hand to the kernel.
pub fn is_user_range(addr: u64, len: u64, ram_end: u64) -> bool {
    let Some(end) = addr.checked_add(len) else { return false };
    addr >= APP_BASE && end <= ram_end.min(RAM_MAP_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_slots() {
        assert_eq!(stack_slot_of(STACK_ARENA), Some(0));
        assert_eq!(stack_slot_of(STACK_ARENA + STACK_SLOT_SIZE - 1), Some(0));
        assert_eq!(stack_slot_of(STACK_ARENA + STACK_SLOT_SIZE), Some(1));
        assert_eq!(stack_slot_of(STACK_ARENA_END - 1), Some(STACK_SLOTS - 1));
        assert_eq!(stack_slot_of(STACK_ARENA_END), None);
        assert_eq!(stack_slot_of(0), None);
    }

    #[test]
    fn user_ranges() {
        let ram = 256 << 20;
        assert!(is_user_range(APP_BASE, 10, ram));
        assert!(!is_user_range(KERNEL_BASE, 10, ram));
        assert!(!is_user_range(APP_BASE - 1, 10, ram));
        assert!(!is_user_range(ram - 4, 8, ram));
        assert!(!is_user_range(u64::MAX - 2, 8, ram));
        assert!(is_user_range(ram - 8, 8, ram));
    }
}
