//! Toro's ring-0 kernel. It boots (PVH), builds nothing it can build at
//! compile time, starts every CPU, and enters the application in ring 3 on
//! each. Afterwards it only serves five traps and reports exceptions: under
//! KVM PVM every ring-0 instruction is emulated, so ring 0 stays small.
#![no_std]
#![no_main]

mod acpi;
mod apic;
mod boot;
mod cpu;
mod paging;
mod pit;
mod serial;
mod traps;

use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, Ordering};

use toro_abi::layout::{self, APP_BASE, APP_LIMIT, STACK_ARENA, STACK_SLOT_SIZE};
use toro_abi::memmap::{self, MemmapEntry};
use toro_abi::{cmdline::Cmdline, status, AppHeader, BootInfo, ABI_VERSION, APP_MAGIC, CMDLINE_MAX, MAX_CPUS};

/// The kernel's own copy of the boot facts (ring 3 gets another copy it
/// may scribble on). Written by the boot CPU before the others are released.
pub struct BootCell(UnsafeCell<BootInfo>);
// SAFETY: written only by the boot CPU while it runs alone, or for AP i's
// own apic_ids[i] slot before RELEASE; read after RELEASE (Acquire).
unsafe impl Sync for BootCell {}

impl BootCell {
    pub fn get(&self) -> &BootInfo {
        // SAFETY: see the Sync impl: no writer is active once readers run.
        unsafe { &*self.0.get() }
    }
}

pub static BOOT: BootCell = BootCell(UnsafeCell::new(BootInfo::zeroed()));
static RELEASE: AtomicBool = AtomicBool::new(false);
static APP_ENTRY: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static APP_BOOT_INFO: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Ends the VM through isa-debug-exit (QEMU exits with `status << 1 | 1`).
pub fn exit(status: u8) -> ! {
    // The launcher reads this line: QEMU's own exit code 1 is ambiguous
    // (status 0, or QEMU failed before the guest ran).
    // The console stays locked: no other core starts a line that would be cut.
    let mut console = serial::lock();
    let _ = writeln!(console, "toro: exit {status}");
    cpu::outb(0xF4, status);
    let _ = writeln!(console, "toro: exit {status}: no isa-debug-exit device (add -device isa-debug-exit,iobase=0xf4,iosize=4)");
    cpu::halt_forever()
}

/// `hvm_start_info` (PVH boot ABI, version 1).
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

const START_INFO_MAGIC: u32 = 0x336e_c578;

fn read_cmdline(paddr: u64, out: &mut [u8; CMDLINE_MAX]) -> u32 {
    if paddr == 0 {
        return 0;
    }
    let mut n = 0;
    while n < CMDLINE_MAX {
        // SAFETY: the command line is a NUL-terminated string in low memory (mapped).
        let b = unsafe { core::ptr::read_volatile((paddr + n as u64) as *const u8) };
        if b == 0 {
            break;
        }
        out[n] = b;
        n += 1;
    }
    n as u32
}

/// Checks the application header the image builder placed at APP_BASE.
fn check_app() -> Result<AppHeader, &'static str> {
    // SAFETY: APP_BASE is mapped; the header is plain data of any bit pattern.
    let h: AppHeader = unsafe { core::ptr::read_volatile(APP_BASE as *const AppHeader) };
    if h.magic != APP_MAGIC {
        return Err("no Toro application header at 0x400000 (build the image with toro-build)");
    }
    if h.abi_version != ABI_VERSION {
        return Err("application built for another Toro ABI version");
    }
    let bi_end = h.boot_info.checked_add(core::mem::size_of::<BootInfo>() as u64);
    let inside = |a: u64| (APP_BASE..APP_LIMIT).contains(&a);
    if !inside(h.entry) || !inside(h.boot_info) || bi_end.is_none_or(|e| e > h.image_end)
        || h.image_end > APP_LIMIT || !h.boot_info.is_multiple_of(8)
    {
        return Err("application header points outside the application image");
    }
    Ok(h)
}

fn fail(status: u8, why: &str) -> ! {
    kprintln!("boot failed: {why}");
    exit(status)
}

fn wait_for_aps(expected: Option<usize>, tsc_hz: u64) -> usize {
    let start = cpu::rdtsc();
    // Known count: wait up to 2 s (TCG is slow). Unknown: give stragglers 50 ms.
    let budget = if expected.is_some() { 2 * tsc_hz } else { tsc_hz / 20 };
    let want = expected.unwrap_or(MAX_CPUS) as u32;
    while traps::cpus_ready() + 1 < want && cpu::rdtsc() - start < budget {
        core::hint::spin_loop();
    }
    traps::cpus_ready() as usize + 1
}

#[no_mangle]
extern "C" fn kmain(start_info: u64) -> ! {
    let tsc_at_boot = cpu::rdtsc();
    traps::init_idt();
    cpu::init_cpu(0);
    // SAFETY: QEMU's PVH loader passes a valid hvm_start_info in low memory.
    let si = unsafe { core::ptr::read_volatile(start_info as *const StartInfo) };
    if si.magic != START_INFO_MAGIC {
        fail(status::BAD_MACHINE, "not started through PVH (bad hvm_start_info magic)");
    }
    // SAFETY: single CPU; nothing else references BOOT yet.
    let boot = unsafe { &mut *BOOT.0.get() };
    boot.abi_version = ABI_VERSION;
    boot.tsc_at_boot = tsc_at_boot;
    boot.cmdline_len = read_cmdline(si.cmdline_paddr, &mut boot.cmdline);

    let entries: &[MemmapEntry] = if si.version >= 1 && si.memmap_paddr != 0 {
        // SAFETY: the memory map table lies in low memory (mapped), `memmap_entries` long.
        unsafe { core::slice::from_raw_parts(si.memmap_paddr as *const MemmapEntry, si.memmap_entries as usize) }
    } else {
        &[]
    };
    let ram_end = match memmap::ram_end(entries) {
        Ok(end) => end,
        Err(memmap::MemmapError::TooLittleRam { found_end }) => {
            kprintln!("boot failed: RAM ends at {found_end:#x}, need at least {:#x} (-m {}M)",
                      layout::MIN_RAM, layout::MIN_RAM >> 20);
            exit(status::BAD_MACHINE)
        }
    };
    paging::unmap_null_page();
    paging::map_heap(ram_end);
    boot.heap_start = layout::HEAP_BASE;
    boot.heap_end = paging::heap_end(ram_end);
    boot.stack_arena = STACK_ARENA;
    boot.stack_slots = layout::STACK_SLOTS;

    let app = check_app().unwrap_or_else(|why| fail(status::BAD_IMAGE, why));
    APP_ENTRY.store(app.entry, Ordering::Relaxed);
    APP_BOOT_INFO.store(app.boot_info, Ordering::Relaxed);

    apic::disable_pic();
    apic::init(true);
    boot.apic_ids[0] = apic::id();
    // The APIC timer is measured over the PIT calibration's window (no extra wait).
    let timer_start = apic::start_timer_calibration();
    boot.tsc_hz = pit::calibrate_tsc().unwrap_or_else(|| {
        kprintln!("PIT does not count; assuming a {} MHz TSC", pit::FALLBACK_HZ / 1_000_000);
        pit::FALLBACK_HZ
    });
    boot.apic_timer_hz = apic::timer_hz(timer_start, boot.tsc_hz);
    // Does the hypervisor acknowledge interrupts itself? (a millisecond at most)
    apic::probe_auto_eoi(traps::PROBE_VECTOR, (boot.apic_timer_hz / 1000).min(u32::MAX as u64) as u32);
    if apic::AUTO_EOI.load(Ordering::Relaxed) {
        traps::ack_by_hypervisor();
    }

    // PCI Express configuration space for ring-3 drivers (q35), before other CPUs start.
    if let Some(ecam) = acpi::pci_ecam(si.rsdp_paddr).filter(|e| e.start_bus == 0) {
        let (start, len) = ecam.range();
        if paging::map_user_mmio(start, len) {
            boot.pci_ecam = ecam.base;
            boot.pci_last_bus = ecam.end_bus as u32;
        } else {
            // Ring 3 then finds no PCI device, and a job that needs its NIC says so.
            kprintln!("PCI configuration space at {:#x} cannot be mapped for ring 3; PCI devices unused", ecam.base);
        }
    }

    let cmdline = Cmdline::new(boot.cmdline());
    let expected = match cmdline.get_u64("cpus") {
        Ok(Some(n)) if (1..=MAX_CPUS as u64).contains(&n) => Some(n as usize),
        Ok(None) => acpi::madt_cpu_count(si.rsdp_paddr),
        _ => fail(status::BAD_MACHINE, "cpus= must be a number from 1 to 64"),
    };
    let cpu_count = if expected == Some(1) {
        1
    } else {
        start_aps(expected, boot.tsc_hz)
    };
    if let Some(want) = expected.filter(|w| *w != cpu_count) {
        kprintln!("only {cpu_count} of {want} CPUs started");
    }
    boot.cpu_count = cpu_count as u32;

    // Ring 3's copy; the kernel keeps using its own.
    // SAFETY: check_app() verified the BootInfo lies inside the app image,
    // which is mapped and writable; no ring-3 code runs yet.
    unsafe { core::ptr::write_volatile(app.boot_info as *mut BootInfo, *boot) };
    RELEASE.store(true, Ordering::Release);
    enter_app(0)
}

fn start_aps(expected: Option<usize>, tsc_hz: u64) -> usize {
    // SAFETY: copies the AP start code (a few dozen bytes of our image) to
    // the start page below 1 MiB, which nothing else uses.
    unsafe {
        let begin = core::ptr::addr_of!(boot::ap_start_begin);
        let len = core::ptr::addr_of!(boot::ap_start_end) as usize - begin as usize;
        core::ptr::copy_nonoverlapping(begin, boot::AP_START_PAGE as *mut u8, len);
    }
    apic::broadcast_init();
    apic::broadcast_startup(boot::AP_START_PAGE);
    wait_for_aps(expected, tsc_hz)
}

fn enter_app(index: usize) -> ! {
    let stack_top = STACK_ARENA + (index as u64 + 1) * STACK_SLOT_SIZE;
    cpu::enter_user(APP_ENTRY.load(Ordering::Relaxed), stack_top, index as u64, APP_BOOT_INFO.load(Ordering::Relaxed))
}

#[no_mangle]
extern "C" fn ap_main(index: u32) -> ! {
    let index = index as usize;
    cpu::init_cpu(index);
    apic::init(false);
    // SAFETY: slot `index` of apic_ids is written only by this CPU, before RELEASE.
    unsafe { (*BOOT.0.get()).apic_ids[index] = apic::id() };
    traps::CPUS_READY.fetch_add(1, Ordering::Release);
    while !RELEASE.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    if index >= BOOT.get().cpu_count as usize {
        // Arrived after the boot CPU stopped waiting: stay out of the way.
        cpu::halt_forever();
    }
    enter_app(index)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    kprintln!("kernel panic on core {}: {info}", cpu::current_index());
    exit(status::KERNEL_FAULT)
}
