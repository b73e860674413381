//! Identity-mapped page tables, built at compile time at a fixed address.
//! At boot only the heap's 2 MiB entries (up to the end of RAM) are added.

use core::cell::UnsafeCell;
use toro_abi::layout::*;

pub const PML4_ADDR: u64 = 0x11_0000;
const PDPT_ADDR: u64 = PML4_ADDR + 0x1000;
const PD_ADDR: u64 = PML4_ADDR + 0x2000;
const PD_COUNT: usize = 4;
const PT_LOW_ADDR: u64 = PD_ADDR + 0x1000 * PD_COUNT as u64;
const PT_STACK_ADDR: u64 = PT_LOW_ADDR + 0x1000;
const PT_STACK_COUNT: usize = ((STACK_ARENA_END - STACK_ARENA) / LARGE_PAGE_SIZE) as usize;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const USER: u64 = 4;
const WRITE_THROUGH: u64 = 8;
const NO_CACHE: u64 = 0x10;
const LARGE: u64 = 0x80;

const KERNEL_RW: u64 = PRESENT | WRITABLE;
const USER_RW: u64 = PRESENT | WRITABLE | USER;
const MMIO: u64 = PRESENT | WRITABLE | NO_CACHE | WRITE_THROUGH | LARGE;

#[repr(C, align(4096))]
pub struct PageTables {
    pml4: [u64; 512],
    pdpt: [u64; 512],
    pd: [[u64; 512]; PD_COUNT],
    pt_low: [u64; 512],
    pt_stack: [[u64; 512]; PT_STACK_COUNT],
}

impl PageTables {
    const fn build() -> Self {
        let mut t = PageTables {
            pml4: [0; 512],
            pdpt: [0; 512],
            pd: [[0; 512]; PD_COUNT],
            pt_low: [0; 512],
            pt_stack: [[0; 512]; PT_STACK_COUNT],
        };
        t.pml4[0] = PDPT_ADDR | USER_RW;
        let mut i = 0;
        while i < PD_COUNT {
            t.pdpt[i] = (PD_ADDR + 0x1000 * i as u64) | USER_RW;
            i += 1;
        }
        // First 2 MiB in 4 KiB pages, ring 0 only. The null page is present
        // only until the boot CPU has read the PVH start info (q35 puts it
        // there), then unmap_null_page() removes it.
        t.pd[0][0] = PT_LOW_ADDR | USER_RW;
        let mut p = 0;
        while p < 512 {
            t.pt_low[p] = (p as u64 * PAGE_SIZE) | KERNEL_RW;
            p += 1;
        }
        // Kernel 2..4 MiB (ring 0 only), then the app image (ring 3).
        let mut addr = LARGE_PAGE_SIZE;
        while addr < APP_LIMIT {
            let flags = if addr < APP_BASE { KERNEL_RW } else { USER_RW };
            t.pd[0][(addr / LARGE_PAGE_SIZE) as usize] = addr | flags | LARGE;
            addr += LARGE_PAGE_SIZE;
        }
        // Thread-stack arena in 4 KiB pages, the lowest page of each slot absent.
        let mut k = 0;
        while k < PT_STACK_COUNT {
            let base = STACK_ARENA + k as u64 * LARGE_PAGE_SIZE;
            t.pd[0][(base / LARGE_PAGE_SIZE) as usize] = (PT_STACK_ADDR + 0x1000 * k as u64) | USER_RW;
            let mut j = 0;
            while j < 512 {
                let a = base + j as u64 * PAGE_SIZE;
                if !(a - STACK_ARENA).is_multiple_of(STACK_SLOT_SIZE) {
                    t.pt_stack[k][j] = a | USER_RW;
                }
                j += 1;
            }
            k += 1;
        }
        // Device MMIO: uncached; only the ring-3 device window is open to ring 3.
        let mut addr = MMIO_BASE;
        while addr < (PD_COUNT as u64) << 30 {
            let i = (addr / LARGE_PAGE_SIZE) as usize;
            let user = if addr + LARGE_PAGE_SIZE > USER_MMIO_BASE && addr < USER_MMIO_END { USER } else { 0 };
            t.pd[i / 512][i % 512] = addr | MMIO | user;
            addr += LARGE_PAGE_SIZE;
        }
        t
    }
}

pub struct Tables(UnsafeCell<PageTables>);
// SAFETY: the tables are written only by the boot CPU before any other CPU
// starts (map_heap), and read by the MMU.
unsafe impl Sync for Tables {}

#[link_section = ".pt"]
#[no_mangle]
pub static PAGE_TABLES: Tables = Tables(UnsafeCell::new(PageTables::build()));

/// Maps the heap `[HEAP_BASE, ram_end)` for ring 3 with 2 MiB pages.
/// Called once by the boot CPU while it is the only CPU running.
pub fn map_heap(ram_end: u64) {
    // SAFETY: single CPU at this point; no reference into the tables is alive.
    let t = unsafe { &mut *PAGE_TABLES.0.get() };
    let mut addr = HEAP_BASE;
    while addr + LARGE_PAGE_SIZE <= ram_end {
        let i = (addr / LARGE_PAGE_SIZE) as usize;
        t.pd[i / 512][i % 512] = addr | USER_RW | LARGE;
        addr += LARGE_PAGE_SIZE;
    }
    // The new entries were absent before: no stale TLB entry can exist.
}

/// End of the heap actually mapped (RAM rounded down to a large page).
pub fn heap_end(ram_end: u64) -> u64 {
    ram_end & !(LARGE_PAGE_SIZE - 1)
}

const _: () = assert!(core::mem::size_of::<PageTables>() as u64 == PT_STACK_ADDR - PML4_ADDR + 0x1000 * PT_STACK_COUNT as u64);

/// Maps `[addr, addr+len)` for ring 0 with 2 MiB pages where nothing is
/// mapped yet (firmware tables above the end of the heap). Boot CPU only.
pub fn map_kernel_range(addr: u64, len: u64) {
    // SAFETY: single CPU at this point; no reference into the tables is alive.
    let t = unsafe { &mut *PAGE_TABLES.0.get() };
    let mut page = addr & !(LARGE_PAGE_SIZE - 1);
    while page < addr + len && page < (PD_COUNT as u64) << 30 {
        let i = (page / LARGE_PAGE_SIZE) as usize;
        if t.pd[i / 512][i % 512] & PRESENT == 0 {
            t.pd[i / 512][i % 512] = page | KERNEL_RW | LARGE;
        }
        page += LARGE_PAGE_SIZE;
    }
}

/// Maps `[addr, addr+len)` uncached for ring 3 with 2 MiB pages where nothing
/// is mapped yet (PCI Express configuration space, below 4 GiB). Boot CPU only.
///
/// Returns whether all of the range is now device memory ring 3 can reach: false
/// if part of it lies beyond the mapped 4 GiB or was already mapped otherwise.
pub fn map_user_mmio(addr: u64, len: u64) -> bool {
    // SAFETY: single CPU at this point; no reference into the tables is alive.
    let t = unsafe { &mut *PAGE_TABLES.0.get() };
    let mut page = addr & !(LARGE_PAGE_SIZE - 1);
    let mut whole = true;
    while page < addr + len {
        if page >= (PD_COUNT as u64) << 30 {
            whole = false;
            break;
        }
        let i = (page / LARGE_PAGE_SIZE) as usize;
        let entry = &mut t.pd[i / 512][i % 512];
        if *entry & PRESENT == 0 {
            *entry = page | MMIO | USER;
        } else if *entry != page | MMIO | USER {
            whole = false;
        }
        page += LARGE_PAGE_SIZE;
    }
    // The new entries were absent before: no stale TLB entry can exist.
    whole
}

/// Removes the null page once nothing at address 0 is needed any more.
/// Boot CPU only, before the other CPUs start.
pub fn unmap_null_page() {
    // SAFETY: single CPU at this point; invlpg drops our own stale entry.
    unsafe {
        (*PAGE_TABLES.0.get()).pt_low[0] = 0;
        core::arch::asm!("invlpg [{}]", in(reg) 0u64, options(nostack));
    }
}
