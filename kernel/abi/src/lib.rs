//! The contract between the ring-0 kernel, the ring-3 runtime, the image
//! builder and the launcher. Plain data and pure parsers only, so every
//! part of it is tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod cmdline;
pub mod layout;
pub mod madt;
pub mod memmap;

/// Trap numbers, passed in `rax` to `int TRAP_VECTOR`.
pub mod trap {
    /// The DPL-3 interrupt gate every trap goes through.
    pub const TRAP_VECTOR: u8 = 0x81;
    /// Halt this core until an interrupt arrives (the wake-up IPI, a device
    /// interrupt routed by [`ROUTE_IRQ`], the timer). `rdi`: local APIC timer
    /// ticks after which the timer ends the halt ([`crate::BootInfo::apic_timer_hz`]
    /// per second, at most `u32::MAX`); 0: no timer (the timer armed by an
    /// earlier halt keeps running either way).
    pub const HALT: u64 = 0;
    /// Send the wake-up IPI to core `rdi`.
    pub const SEND_IPI: u64 = 1;
    /// End the VM with status `rdi` (0..=127).
    pub const EXIT: u64 = 2;
    /// Write `rsi` bytes at `rdi` to the console, atomically with respect to other cores.
    pub const CONSOLE_WRITE: u64 = 3;
    /// Route IOAPIC input `rdi` (a GSI, 0..=23) to core `rsi` ([`ALL_CORES`]:
    /// every core) as [`crate::DEVICE_VECTOR`], edge-triggered: a device
    /// interrupt then ends the core's halt (and is acknowledged like the
    /// wake-up IPI). For a device whose line rises on each event it should be
    /// signalled for (virtio-mmio raises its line at every used-buffer
    /// notification). May be called again to move the interrupt.
    pub const ROUTE_IRQ: u64 = 4;
    /// `ROUTE_IRQ`'s destination meaning every core.
    pub const ALL_CORES: u64 = u64::MAX;
    /// Returned in `rax` by the kernel for an unknown trap or bad arguments.
    pub const ERROR: u64 = u64::MAX;
}

/// Vector of the wake-up IPI.
pub const WAKE_VECTOR: u8 = 0xF0;
/// Vector of the local APIC timer that bounds a timed halt.
pub const TIMER_VECTOR: u8 = 0xF1;
/// Vector of device interrupts routed by `trap::ROUTE_IRQ`.
pub const DEVICE_VECTOR: u8 = 0xE0;

/// Exit statuses the VM ends with besides what the app returns.
pub mod status {
    pub const OK: u8 = 0;
    /// A Rust panic in the app or the runtime.
    pub const PANIC: u8 = 101;
    /// A CPU exception in ring 3 (page fault, #GP, #UD, ...).
    pub const USER_FAULT: u8 = 110;
    /// A CPU exception in ring 0: a kernel bug.
    pub const KERNEL_FAULT: u8 = 111;
    /// The image holds no valid Toro application.
    pub const BAD_IMAGE: u8 = 112;
    /// The machine does not fit (too little memory, too many CPUs, ...).
    pub const BAD_MACHINE: u8 = 113;

    /// QEMU's isa-debug-exit turns a written value `v` into the process exit
    /// code `(v << 1) | 1`; this undoes it.
    pub fn from_qemu_exit_code(code: i32) -> Option<u8> {
        if code & 1 == 1 && (1..=255).contains(&code) {
            Some((code >> 1) as u8)
        } else {
            None
        }
    }

    /// A short name for a status, for the launcher's one-line reports.
    pub fn describe(s: u8) -> &'static str {
        match s {
            OK => "success",
            PANIC => "panic",
            USER_FAULT => "CPU exception in the application",
            KERNEL_FAULT => "CPU exception in the kernel",
            BAD_IMAGE => "not a valid Toro application image",
            BAD_MACHINE => "machine does not fit the image",
            _ => "application exit status",
        }
    }
}

/// Placed by the app's linker script at [`layout::APP_BASE`]; the kernel
/// checks it before entering ring 3, the image builder and the launcher
/// check it in the file.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AppHeader {
    pub magic: [u8; 8],
    pub abi_version: u32,
    pub header_size: u32,
    /// Ring-3 entry: `extern "C" fn(core: usize, info: *const BootInfo) -> !`.
    pub entry: u64,
    /// Where the kernel writes the [`BootInfo`] (inside the app's writable memory).
    pub boot_info: u64,
    /// First byte past the app image (bss included).
    pub image_end: u64,
}

pub const APP_MAGIC: [u8; 8] = *b"TOROAPP\0";
pub const ABI_VERSION: u32 = 3;

/// Maximum number of cores (vCPUs) in one VM.
pub const MAX_CPUS: usize = 64;
/// Bytes of kernel command line handed to ring 3.
pub const CMDLINE_MAX: usize = 4096;

/// What the kernel tells the runtime, written before any core enters ring 3.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BootInfo {
    pub abi_version: u32,
    pub cpu_count: u32,
    /// TSC ticks per second, calibrated against the PIT.
    pub tsc_hz: u64,
    /// TSC value when the kernel started (for boot-time figures).
    pub tsc_at_boot: u64,
    /// Local APIC timer ticks per second (divide by 1), measured against the TSC.
    pub apic_timer_hz: u64,
    /// Usable memory for the runtime's heaps: `[heap_start, heap_end)`.
    pub heap_start: u64,
    pub heap_end: u64,
    /// Thread-stack arena: `stack_slots` slots of [`layout::STACK_SLOT_SIZE`]
    /// bytes from `stack_arena`, the lowest page of each slot unmapped (guard).
    pub stack_arena: u64,
    pub stack_slots: u64,
    pub apic_ids: [u32; MAX_CPUS],
    /// PCI Express configuration space (ECAM) of bus 0 when the machine has one
    /// (q35: from the ACPI MCFG), mapped uncached for ring 3; 0 when none (microvm).
    pub pci_ecam: u64,
    /// The last bus number the ECAM at `pci_ecam` covers.
    pub pci_last_bus: u32,
    pub cmdline_len: u32,
    pub cmdline: [u8; CMDLINE_MAX],
}

impl BootInfo {
    pub const fn zeroed() -> Self {
        BootInfo {
            abi_version: 0,
            cpu_count: 0,
            tsc_hz: 0,
            tsc_at_boot: 0,
            apic_timer_hz: 0,
            heap_start: 0,
            heap_end: 0,
            stack_arena: 0,
            stack_slots: 0,
            apic_ids: [0; MAX_CPUS],
            pci_ecam: 0,
            pci_last_bus: 0,
            cmdline_len: 0,
            cmdline: [0; CMDLINE_MAX],
        }
    }

    pub fn cmdline(&self) -> &str {
        let len = (self.cmdline_len as usize).min(CMDLINE_MAX);
        core::str::from_utf8(&self.cmdline[..len]).unwrap_or("")
    }
}
