//! Interrupt entry: CPU exceptions (reported, then the VM ends), the DPL-3
//! trap gate ring 3 calls the kernel through, and the wake-up IPI.

use core::arch::global_asm;
use core::sync::atomic::Ordering;

use crate::cpu::{self, Gate};
use crate::{apic, exit, kprintln, serial, BOOT};
use toro_abi::{status, trap, DEVICE_VECTOR, WAKE_VECTOR};

global_asm!(
    r#"
    .macro EXC_NOERR vec
    exc_\vec:
        pushq $0
        pushq $\vec
        jmp exc_common
    .endm
    .macro EXC_ERR vec
    exc_\vec:
        pushq $\vec
        jmp exc_common
    .endm

    /* The trap a waiting core makes once per message it waits for: a halt
       with no timer to arm (rax = HALT, rdi = 0). Served here, without the
       call into trap_dispatch: under PVM every ring-0 instruction is
       emulated, and this saves about a dozen of them per halt. Anything else
       falls through to the general path. */
    .macro HALT_FAST_PATH
        cmpq ${halt}, %rax
        jne 9f
        testq %rdi, %rdi
        jnz 9f
        sti
        hlt
        cli
        xorl %eax, %eax
        iretq
    9:
    .endm

    .text
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    /* vector 6: see ud_entry */
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

exc_6:
    pushq $0
    pushq $6
    jmp exc_common

    /* #UD. KVM PVM turns `int N` in ring 3 into #UD; when ring 3 executed
       our trap instruction, serve the trap here and resume after it. */
    .global ud_entry
ud_entry:
    testb $3, 8(%rsp)
    jz exc_6
    movq (%rsp), %r11
    cmpw ${trap_insn}, (%r11)
    jne exc_6
    addq $2, (%rsp)
    HALT_FAST_PATH
    jmp trap_general

exc_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call exception_report
    ud2

    /* int 0x81 from ring 3 (or the #UD PVM turns it into): rax = trap number, rdi/rsi/rdx = arguments.
       The ring-3 caller treats every C caller-saved register as clobbered,
       so nothing is saved here (each ring-0 instruction is costly under PVM). */
    .global trap_entry
trap_entry:
    HALT_FAST_PATH
trap_general:
    movq %rdx, %rcx
    movq %rsi, %rdx
    movq %rdi, %rsi
    movq %rax, %rdi
    subq $8, %rsp
    call trap_dispatch
    addq $8, %rsp
    iretq

    /* Wake-up IPI, timer and device interrupts: taken inside the halt trap
       (or in ring 3 if a hypervisor leaves interrupts on there); only
       acknowledges (all are edge-triggered: no IOAPIC EOI). Where the
       hypervisor acknowledges them itself (apic::AUTO_EOI) their gates point
       at the bare `iretq` of spurious_entry instead (ack_by_hypervisor). */
    .global wake_entry
wake_entry:
    pushq %rax
    pushq %rcx
    pushq %rdx
    cmpb $0, X2APIC_MODE(%rip)
    je 1f
    movl $0x80b, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    jmp 2f
1:  movl $0xfee000b0, %eax
    movl $0, (%rax)
2:  popq %rdx
    popq %rcx
    popq %rax
    iretq

    /* The boot CPU's AUTO_EOI probe (apic::probe_auto_eoi): every register
       the C calling convention lets probe_interrupt clobber is saved. Nine
       pushes on the 40-byte frame keep the call 16-byte aligned. */
    .global probe_entry
probe_entry:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    call probe_interrupt
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    iretq

    .global spurious_entry
spurious_entry:
    iretq

    .section .rodata
    .p2align 3
    .global exception_stubs
exception_stubs:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_\v
    .endr
    .text
"#,
    trap_insn = const 0xCD | (toro_abi::trap::TRAP_VECTOR as u16) << 8,
    halt = const toro_abi::trap::HALT,
    options(att_syntax)
);

extern "C" {
    static exception_stubs: [u64; 32];
    fn ud_entry();
    fn trap_entry();
    fn wake_entry();
    fn probe_entry();
    fn spurious_entry();
}

/// Builds the IDT (boot CPU, before the others start).
pub fn init_idt() {
    for v in 0..32u8 {
        // SAFETY: exception_stubs is a read-only table emitted above.
        let stub = unsafe { exception_stubs[v as usize] };
        cpu::set_gate(v, stub, Gate::Kernel { ist: 1 });
    }
    // Any other interrupt (firmware-programmed devices we never use) is
    // acknowledged and ignored; the wake-up stub does exactly that.
    for v in 32..=0xFEu8 {
        cpu::set_gate(v, wake_entry as *const () as u64, Gate::Kernel { ist: 0 });
    }
    // #UD doubles as a trap path (see ud_entry): no IST, like the trap gate.
    cpu::set_gate(6, ud_entry as *const () as u64, Gate::Kernel { ist: 0 });
    cpu::set_gate(trap::TRAP_VECTOR, trap_entry as *const () as u64, Gate::User);
    cpu::set_gate(0xFF, spurious_entry as *const () as u64, Gate::Kernel { ist: 0 });
    cpu::set_gate(PROBE_VECTOR, probe_entry as *const () as u64, Gate::Kernel { ist: 0 });
}

/// Points every interrupt gate that acknowledged (`wake_entry`) at a bare `iretq`:
/// for a hypervisor that acknowledges interrupts as it delivers them
/// (`apic::AUTO_EOI`). Boot CPU only, before the other CPUs start.
pub fn ack_by_hypervisor() {
    for v in 32..=0xFEu8 {
        if v != trap::TRAP_VECTOR && v != PROBE_VECTOR {
            cpu::set_gate(v, spurious_entry as *const () as u64, Gate::Kernel { ist: 0 });
        }
    }
}

/// The vector of `apic::probe_auto_eoi`'s self-IPIs (boot only).
pub const PROBE_VECTOR: u8 = 0xF2;

/// The probe's interrupt: records whether it arrived in service, and acknowledges it if so.
#[no_mangle]
extern "C" fn probe_interrupt() {
    let in_service = apic::in_service(PROBE_VECTOR);
    if in_service {
        apic::eoi();
    }
    apic::PROBE_SEEN.store(if in_service { 1 } else { 2 }, Ordering::Relaxed);
}

#[repr(C)]
pub struct ExceptionFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

fn exception_name(v: u64) -> &'static str {
    match v {
        0 => "divide error (#DE)",
        1 => "debug (#DB)",
        2 => "NMI",
        3 => "breakpoint (#BP)",
        4 => "overflow (#OF)",
        5 => "bound range (#BR)",
        6 => "invalid opcode (#UD)",
        7 => "device not available (#NM)",
        8 => "double fault (#DF)",
        10 => "invalid TSS (#TS)",
        11 => "segment not present (#NP)",
        12 => "stack fault (#SS)",
        13 => "general protection (#GP)",
        14 => "page fault (#PF)",
        16 => "x87 floating point (#MF)",
        17 => "alignment check (#AC)",
        18 => "machine check (#MC)",
        19 => "SIMD floating point (#XM)",
        _ => "exception",
    }
}

#[no_mangle]
extern "C" fn exception_report(frame: &ExceptionFrame) -> ! {
    apic::stop_other_cpus();
    let core = cpu::current_index();
    let user = frame.cs & 3 == 3;
    let ring = if user { "application (ring 3)" } else { "kernel (ring 0)" };
    let name = exception_name(frame.vector);
    if frame.vector == 14 {
        let cr2: u64;
        // SAFETY: reads the faulting address register.
        unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
        let access = if frame.error & 2 != 0 { "write" } else if frame.error & 16 != 0 { "execute" } else { "read" };
        let guard = toro_abi::layout::stack_slot_of(cr2)
            .filter(|_| (cr2 - toro_abi::layout::STACK_ARENA) % toro_abi::layout::STACK_SLOT_SIZE < toro_abi::layout::PAGE_SIZE);
        let why = match guard {
            Some(_) => "stack overflow: guard page of a thread stack",
            None if frame.error & 1 != 0 => "protection violation",
            None => "page not present",
        };
        kprintln!(
            "core {core}: {name} in the {ring}: {access} at address {cr2:#x} ({why}), rip {:#x}, rsp {:#x}, error {:#x}",
            frame.rip, frame.rsp, frame.error
        );
    } else {
        kprintln!(
            "core {core}: {name} (vector {}) in the {ring}: rip {:#x}, rsp {:#x}, error {:#x}",
            frame.vector, frame.rip, frame.rsp, frame.error
        );
    }
    exit(if user { status::USER_FAULT } else { status::KERNEL_FAULT })
}

#[no_mangle]
extern "C" fn trap_dispatch(number: u64, a0: u64, a1: u64, _a2: u64) -> u64 {
    match number {
        trap::HALT => {
            if a0 != 0 {
                apic::arm_timer(a0.min(u32::MAX as u64) as u32);
            }
            // `sti; hlt` is atomic with respect to interrupts: a wake-up IPI
            // (or device or timer interrupt) that arrived while ring 3 ran
            // (interrupts masked) ends the hlt.
            // SAFETY: enables interrupts only for the duration of the halt.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
            0
        }
        trap::SEND_IPI => {
            let boot = BOOT.get();
            if a0 >= boot.cpu_count as u64 {
                return trap::ERROR;
            }
            apic::send_ipi(boot.apic_ids[a0 as usize], WAKE_VECTOR);
            0
        }
        trap::EXIT => exit(a0.min(127) as u8),
        trap::ROUTE_IRQ => {
            let boot = BOOT.get();
            let destination = match a1 {
                trap::ALL_CORES => 0xFF,
                core if core < boot.cpu_count as u64 => boot.apic_ids[core as usize],
                _ => return trap::ERROR,
            };
            if a0 >= apic::IOAPIC_PINS || destination > 0xFF {
                return trap::ERROR;
            }
            apic::route(a0 as u8, DEVICE_VECTOR, destination as u8);
            0
        }
        trap::CONSOLE_WRITE => {
            let ram_end = BOOT.get().heap_end;
            if !toro_abi::layout::is_user_range(a0, a1, ram_end) {
                return trap::ERROR;
            }
            // SAFETY: the range lies in ring-3 memory that is mapped (checked above).
            let bytes = unsafe { core::slice::from_raw_parts(a0 as *const u8, a1 as usize) };
            serial::lock().write_bytes(bytes);
            0
        }
        _ => trap::ERROR,
    }
}

/// Counts the CPUs that finished their ring-0 setup.
pub static CPUS_READY: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

pub fn cpus_ready() -> u32 {
    CPUS_READY.load(Ordering::Acquire)
}
