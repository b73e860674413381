//! Per-CPU descriptor tables (GDT with TSS, shared IDT) and register access.

use core::arch::asm;
use core::cell::UnsafeCell;

use crate::boot::{IST_STACKS, IST_STACK_SIZE, KSTACKS, KSTACK_SIZE};
use toro_abi::MAX_CPUS;

pub const KERNEL_CS: u16 = 0x08;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct PerCpu {
    gdt: [u64; 7],
    tss: Tss,
}

struct PerCpuTables(UnsafeCell<[PerCpu; MAX_CPUS]>);
// SAFETY: CPU i only ever touches entry i (init_cpu(i) runs on CPU i).
unsafe impl Sync for PerCpuTables {}

static PER_CPU: PerCpuTables = PerCpuTables(UnsafeCell::new(
    [PerCpu {
        gdt: [0; 7],
        tss: Tss { _reserved0: 0, rsp: [0; 3], _reserved1: 0, ist: [0; 7], _reserved2: 0, _reserved3: 0, iomap_base: 104 },
    }; MAX_CPUS],
));

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_hi: u32,
    _zero: u32,
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[IdtEntry; 256]>);
// SAFETY: written once by the boot CPU before any other CPU loads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new(
    [IdtEntry { offset_lo: 0, selector: 0, ist: 0, type_attr: 0, offset_mid: 0, offset_hi: 0, _zero: 0 }; 256],
));

/// Gate kinds: an interrupt gate reachable from ring 0 only, or from ring 3 (`int N`).
pub enum Gate {
    Kernel { ist: u8 },
    User,
}

/// Fills one IDT entry. Boot CPU only, before the other CPUs start.
pub fn set_gate(vector: u8, handler: u64, gate: Gate) {
    let (ist, type_attr) = match gate {
        Gate::Kernel { ist } => (ist, 0x8E),
        Gate::User => (0, 0xEE),
    };
    // SAFETY: single CPU at this point (see Idt).
    let idt = unsafe { &mut *IDT.0.get() };
    idt[vector as usize] = IdtEntry {
        offset_lo: handler as u16,
        selector: KERNEL_CS,
        ist,
        type_attr,
        offset_mid: (handler >> 16) as u16,
        offset_hi: (handler >> 32) as u32,
        _zero: 0,
    };
}

/// Loads this CPU's GDT, TSS and the IDT, and enables SSE for ring 3.
pub fn init_cpu(index: usize) {
    let kstack_top = core::ptr::addr_of!(KSTACKS) as u64 + ((index + 1) * KSTACK_SIZE) as u64;
    let ist_top = core::ptr::addr_of!(IST_STACKS) as u64 + ((index + 1) * IST_STACK_SIZE) as u64;
    // SAFETY: entry `index` belongs to this CPU alone.
    let cpu = unsafe { &mut (*PER_CPU.0.get())[index] };
    cpu.tss.rsp[0] = kstack_top;
    cpu.tss.ist[0] = ist_top;
    let tss = core::ptr::addr_of!(cpu.tss) as u64;
    let limit = core::mem::size_of::<Tss>() as u64 - 1;
    cpu.gdt = [
        0,
        0x00af9a000000ffff, // kernel code
        0x00cf92000000ffff, // kernel data
        0x00cff2000000ffff, // user data
        0x00affa000000ffff, // user code
        (limit & 0xffff) | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | ((tss >> 24 & 0xff) << 56),
        tss >> 32,
    ];
    let gdt_ptr = DescriptorPointer { limit: 7 * 8 - 1, base: cpu.gdt.as_ptr() as u64 };
    let idt_ptr = DescriptorPointer { limit: 256 * 16 - 1, base: IDT.0.get() as u64 };
    // SAFETY: the GDT keeps the selectors the running code uses (0x08/0x10);
    // the TSS descriptor is fresh (not busy); the IDT is fully built.
    unsafe {
        asm!("lgdt [{}]", in(reg) &gdt_ptr, options(readonly, nostack));
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack));
        asm!("lidt [{}]", in(reg) &idt_ptr, options(readonly, nostack));
        // SSE for ring 3: CR0.EM=0, CR0.MP=1; CR4.OSFXSR|OSXMMEXCPT.
        let mut cr0: u64;
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        cr0 = (cr0 & !(1 << 2)) | (1 << 1) | (1 << 5);
        asm!("mov cr0, {}", in(reg) cr0, options(nomem, nostack));
        let mut cr4: u64;
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        cr4 |= (1 << 9) | (1 << 10);
        asm!("mov cr4, {}", in(reg) cr4, options(nomem, nostack));
    }
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// The index of the running CPU, from which kernel or IST stack it is on.
pub fn current_index() -> usize {
    let rsp: u64;
    // SAFETY: reads the stack pointer only.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    let k = core::ptr::addr_of!(KSTACKS) as u64;
    let i = core::ptr::addr_of!(IST_STACKS) as u64;
    if rsp >= k && rsp < k + (MAX_CPUS * KSTACK_SIZE) as u64 {
        ((rsp - k) / KSTACK_SIZE as u64) as usize
    } else {
        (rsp.wrapping_sub(i) / IST_STACK_SIZE as u64) as usize
    }
}

/// Enters ring 3 at `entry` with `rsp`, interrupts masked (they are taken
/// only inside the halt trap), passing `arg0`/`arg1` in rdi/rsi.
pub fn enter_user(entry: u64, rsp: u64, arg0: u64, arg1: u64) -> ! {
    // SAFETY: builds an iretq frame to ring-3 selectors from our GDT; entry
    // and stack were checked to lie in user-accessible memory.
    unsafe {
        asm!(
            "push {ss}",
            "push {rsp}",
            "push 0x2",
            "push {cs}",
            "push {rip}",
            "xor eax, eax", "xor ebx, ebx", "xor ecx, ecx", "xor edx, edx",
            "xor ebp, ebp", "xor r8d, r8d", "xor r9d, r9d", "xor r10d, r10d",
            "xor r11d, r11d", "xor r12d, r12d", "xor r13d, r13d", "xor r14d, r14d", "xor r15d, r15d",
            "iretq",
            ss = in(reg) USER_DS as u64,
            rsp = in(reg) rsp,
            cs = in(reg) USER_CS as u64,
            rip = in(reg) entry,
            in("rdi") arg0,
            in("rsi") arg1,
            options(noreturn)
        )
    }
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers pass MSRs that exist on every x86-64 with the features they checked.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}

pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: as for rdmsr.
    unsafe { asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack)) };
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc has no side effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}

pub fn cpuid(leaf: u32) -> [u32; 4] {
    #[allow(unused_unsafe)]
    // SAFETY: cpuid exists on every x86-64 CPU.
    let r = unsafe { core::arch::x86_64::__cpuid(leaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to devices this kernel owns (serial, PIT, debug-exit).
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for outb.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stops this CPU; nothing depends on it any more.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}
