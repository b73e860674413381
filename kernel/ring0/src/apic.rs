//! Local APIC: x2APIC (MSRs) when the CPU has it, else xAPIC (MMIO).

use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu::{cpuid, rdmsr, rdtsc, wrmsr};
use toro_abi::layout::{IOAPIC_BASE, LAPIC_BASE};
use toro_abi::TIMER_VECTOR;

/// Read by the wake-up interrupt stub to pick the EOI method.
#[no_mangle]
pub static X2APIC_MODE: AtomicBool = AtomicBool::new(false);
static READY: AtomicBool = AtomicBool::new(false);
/// Set when the hypervisor acknowledges an interrupt as it delivers it: the
/// in-service bit is already clear in the handler (KVM PVM does this; TCG and
/// hardware virtualisation do not). The interrupt gates then point at a bare
/// `iretq` (`traps::ack_by_hypervisor`), which saves an emulated `wrmsr` and
/// ~10 more emulated instructions per interrupt under PVM. Decided once at
/// boot by [`probe_auto_eoi`], before the other CPUs start.
pub static AUTO_EOI: AtomicBool = AtomicBool::new(false);

const APIC_BASE_MSR: u32 = 0x1B;
const SPURIOUS_VECTOR: u32 = 0xFF;

// Register offsets (xAPIC MMIO offset; x2APIC MSR = 0x800 + offset / 16).
const ID: u32 = 0x20;
const TPR: u32 = 0x80;
const EOI: u32 = 0xB0;
/// First of the eight 32-bit in-service registers.
const ISR: u32 = 0x100;
const SVR: u32 = 0xF0;
const LVT_LINT0: u32 = 0x350;
const LVT_LINT1: u32 = 0x360;
const ICR_LO: u32 = 0x300;
const ICR_HI: u32 = 0x310;
const LVT_TIMER: u32 = 0x320;
const TIMER_INITIAL: u32 = 0x380;
const TIMER_CURRENT: u32 = 0x390;
const TIMER_DIVIDE: u32 = 0x3E0;
/// Divide configuration value for "divide by 1".
const DIVIDE_BY_1: u32 = 0b1011;

fn x2apic() -> bool {
    X2APIC_MODE.load(Ordering::Relaxed)
}

fn write(reg: u32, value: u32) {
    if x2apic() {
        wrmsr(0x800 + reg / 16, value as u64);
    } else {
        // SAFETY: the xAPIC page is identity mapped (uncached) for ring 0.
        unsafe { core::ptr::write_volatile((LAPIC_BASE + reg as u64) as *mut u32, value) };
    }
}

fn read(reg: u32) -> u32 {
    if x2apic() {
        rdmsr(0x800 + reg / 16) as u32
    } else {
        // SAFETY: as in `write`.
        unsafe { core::ptr::read_volatile((LAPIC_BASE + reg as u64) as *const u32) }
    }
}

/// Remaps the legacy 8259 PICs away from the exception vectors and masks them.
pub fn disable_pic() {
    use crate::cpu::outb;
    for (cmd, data, base, cascade) in [(0x20, 0x21, 0x20, 4), (0xA0, 0xA1, 0x28, 2)] {
        outb(cmd, 0x11);
        outb(data, base);
        outb(data, cascade);
        outb(data, 0x01);
        outb(data, 0xFF);
    }
}

/// Enables this CPU's local APIC. The boot CPU decides the mode for all.
pub fn init(boot_cpu: bool) {
    if boot_cpu {
        let has_x2apic = cpuid(1)[2] & (1 << 21) != 0;
        X2APIC_MODE.store(has_x2apic, Ordering::Relaxed);
    }
    let mut base = rdmsr(APIC_BASE_MSR) | (1 << 11);
    if x2apic() {
        base |= 1 << 10;
    }
    wrmsr(APIC_BASE_MSR, base);
    write(TPR, 0);
    write(SVR, 0x100 | SPURIOUS_VECTOR);
    // No legacy interrupts through LINT0/LINT1 (SeaBIOS leaves the PIC and PIT running on q35).
    write(LVT_LINT0, 1 << 16);
    write(LVT_LINT1, 1 << 16);
    // One-shot timer, stopped until a timed halt writes its initial count.
    write(TIMER_DIVIDE, DIVIDE_BY_1);
    write(LVT_TIMER, TIMER_VECTOR as u32);
    if boot_cpu {
        READY.store(true, Ordering::Release);
    }
}

/// Stops every other CPU (INIT puts them in wait-for-SIPI): before the
/// last words of a failing VM, so no other core writes while they print.
pub fn stop_other_cpus() {
    if READY.load(Ordering::Acquire) {
        broadcast_init();
    }
}

pub fn id() -> u32 {
    if x2apic() { read(ID) } else { read(ID) >> 24 }
}

fn send_icr(dest: u32, low: u32) {
    if x2apic() {
        wrmsr(0x830, (dest as u64) << 32 | low as u64);
    } else {
        write(ICR_HI, dest << 24);
        write(ICR_LO, low);
        while read(ICR_LO) & (1 << 12) != 0 {
            core::hint::spin_loop();
        }
    }
}

/// A fixed-delivery interrupt `vector` to the CPU with `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send_icr(apic_id, vector as u32);
}

const ALL_BUT_SELF: u32 = 3 << 18;

/// INIT to every other CPU.
pub fn broadcast_init() {
    send_icr(0, ALL_BUT_SELF | 0x4500);
}

/// Start-up IPI to every other CPU: they begin in real mode at `page`.
pub fn broadcast_startup(page: u64) {
    send_icr(0, ALL_BUT_SELF | 0x4600 | (page >> 12) as u32);
}

pub fn eoi() {
    write(EOI, 0);
}

/// Whether `vector` is in service on this CPU (delivered, not yet acknowledged).
pub fn in_service(vector: u8) -> bool {
    read(ISR + (vector as u32 / 32) * 0x10) & (1 << (vector % 32)) != 0
}

/// What the probe's interrupt found: 0 not taken yet, 1 in service, 2 already acknowledged.
pub static PROBE_SEEN: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Decides [`AUTO_EOI`] (boot CPU, interrupts off, before the other CPUs start):
/// sends itself `vector` twice, to be taken while running (one instruction with
/// interrupts on) and while halted (how every interrupt here is taken), and sets
/// the flag only if an interrupt came and every one that came was already
/// acknowledged. (KVM PVM delivers none in the one-instruction window: its
/// interrupt waits for the halt.) The halt is bounded by the timer (`timeout_ticks`).
pub fn probe_auto_eoi(vector: u8, timeout_ticks: u32) {
    let (mut taken, mut acknowledged) = (0, true);
    for halt in [false, true] {
        PROBE_SEEN.store(0, Ordering::Relaxed);
        send_ipi(id(), vector);
        if halt {
            arm_timer(timeout_ticks.max(1));
            // SAFETY: interrupts only for the duration of the halt (as in the
            // halt trap); the handlers of every vector are installed.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
            arm_timer(0);
        } else {
            // SAFETY: interrupts for one instruction; the pending IPI is taken then.
            unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
        }
        match PROBE_SEEN.load(Ordering::Relaxed) {
            0 => {}
            seen => {
                taken += 1;
                acknowledged &= seen == 2;
            }
        }
    }
    AUTO_EOI.store(taken > 0 && acknowledged, Ordering::Relaxed);
}

/// Starts this CPU's timer counting down from `ticks` (one-shot; 0 stops it).
/// One register write: a VM exit under PVM.
pub fn arm_timer(ticks: u32) {
    write(TIMER_INITIAL, ticks);
}

/// Timer calibration, first half: starts the timer from its largest count
/// and returns the TSC at that moment (call `timer_hz` after a few ms).
pub fn start_timer_calibration() -> u64 {
    arm_timer(u32::MAX);
    rdtsc()
}

/// Timer calibration, second half: the timer's ticks per second, from the
/// count elapsed since `start_timer_calibration` returned `tsc_start`.
/// KVM and QEMU both emulate a 1 GHz timer; that is the answer when the
/// measurement is impossible (timer expired, no time elapsed).
pub fn timer_hz(tsc_start: u64, tsc_hz: u64) -> u64 {
    let current = read(TIMER_CURRENT);
    let tsc_end = rdtsc();
    arm_timer(0);
    let ticks = (u32::MAX - current) as u64;
    let elapsed = tsc_end.wrapping_sub(tsc_start);
    if current == 0 || elapsed == 0 || ticks == 0 {
        return 1_000_000_000;
    }
    (ticks as u128 * tsc_hz as u128 / elapsed as u128) as u64
}

/// IOAPIC registers: the index register, then the data window.
const IOREGSEL: u64 = IOAPIC_BASE;
const IOWIN: u64 = IOAPIC_BASE + 0x10;
/// Redirection table entry `n`: registers 0x10 + 2n (low) and 0x11 + 2n (high).
const REDIRECTION_TABLE: u32 = 0x10;
pub const IOAPIC_PINS: u64 = 24;

/// Held while a CPU uses the IOAPIC's index/data register pair.
static IOAPIC_BUSY: AtomicBool = AtomicBool::new(false);

fn ioapic_write(register: u32, value: u32) {
    // SAFETY: the IOAPIC page is identity mapped (uncached) for ring 0; the
    // index/data pair is used while IOAPIC_BUSY is held only.
    unsafe {
        core::ptr::write_volatile(IOREGSEL as *mut u32, register);
        core::ptr::write_volatile(IOWIN as *mut u32, value);
    }
}

/// Routes IOAPIC input `pin` to the CPU with APIC id `destination` (0xFF:
/// every CPU) as `vector`: fixed delivery, physical destination, active high,
/// edge-triggered, unmasked. Four register writes (VM exits).
pub fn route(pin: u8, vector: u8, destination: u8) {
    while IOAPIC_BUSY.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    let entry = REDIRECTION_TABLE + 2 * pin as u32;
    ioapic_write(entry + 1, (destination as u32) << 24);
    ioapic_write(entry, vector as u32);
    IOAPIC_BUSY.store(false, Ordering::Release);
}
