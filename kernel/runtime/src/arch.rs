//! The few things ring 3 needs in assembly: the app header and entry,
//! the context switch, traps into the kernel, and the memory functions
//! `core` expects (memcpy & co.; there is no libc).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, Ordering};

use toro_abi::trap;

/// Bytes at the top of every stack slot reserved for the slot's owner
/// pointer (see sched::current).
pub const SLOT_RESERVED: usize = 64;

global_asm!(
    r#"
    .section .toro_header, "a"
    .p2align 3
    .ascii "TOROAPP\0"
    .long {abi}
    .long 40
    .quad _start
    .quad TORO_BOOT_INFO
    .quad __app_end

    .text
    .global _start
_start:
    /* rdi = core index, rsi = &BootInfo, rsp = top of this core's stack slot */
    subq ${reserved}, %rsp
    andq $-16, %rsp
    fninit
    call toro_rt_start
    ud2

    /* toro_switch(save: *mut usize, load: usize): saves the callee-saved
       registers of the running thread, resumes the other one. */
    .global toro_switch
toro_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    .global toro_thread_trampoline
toro_thread_trampoline:
    call toro_thread_main
    ud2

    /* Memory functions. Two copy strategies: `rep movsb` where the CPU
       runs natively (fast strings), an unrolled 8-byte loop under TCG,
       where QEMU emulates `rep movsb` a byte at a time. */
    .global memcpy
memcpy:
    movq %rdi, %rax
    /* Up to 16 bytes (MPI envelopes, 8-byte reductions): a few moves, every
       load before any store (memmove relies on it), instead of `rep movsb`,
       whose start-up costs more than such a copy. */
    cmpq $16, %rdx
    ja 5f
    cmpq $8, %rdx
    jb 6f
    movq (%rsi), %rcx
    movq -8(%rsi,%rdx), %r8
    movq %rcx, (%rdi)
    movq %r8, -8(%rdi,%rdx)
    ret
6:  cmpq $4, %rdx
    jb 7f
    movl (%rsi), %ecx
    movl -4(%rsi,%rdx), %r8d
    movl %ecx, (%rdi)
    movl %r8d, -4(%rdi,%rdx)
    ret
7:  testq %rdx, %rdx
    jz 8f
    movzbl (%rsi), %ecx
    movzbl -1(%rsi,%rdx), %r8d
    cmpq $3, %rdx
    jne 9f
    movzbl 1(%rsi), %r9d
    movb %r9b, 1(%rdi)
9:  movb %cl, (%rdi)
    movb %r8b, -1(%rdi,%rdx)
8:  ret
5:  cmpb $0, TORO_FAST_STRINGS(%rip)
    je 1f
    movq %rdx, %rcx
    rep movsb
    ret
1:  movq %rdx, %rcx
    shrq $5, %rcx
    jz 3f
2:  movq (%rsi), %r8
    movq 8(%rsi), %r9
    movq 16(%rsi), %r10
    movq 24(%rsi), %r11
    movq %r8, (%rdi)
    movq %r9, 8(%rdi)
    movq %r10, 16(%rdi)
    movq %r11, 24(%rdi)
    addq $32, %rsi
    addq $32, %rdi
    decq %rcx
    jnz 2b
3:  movq %rdx, %rcx
    andq $31, %rcx
    rep movsb
    ret

    .global memmove
memmove:
    movq %rdi, %rax
    subq %rsi, %rax
    cmpq %rdx, %rax
    jae memcpy              /* dst before src, or no overlap: copy forwards */
    movq %rdi, %rax
    leaq -1(%rdi,%rdx), %rdi
    leaq -1(%rsi,%rdx), %rsi
    movq %rdx, %rcx
    std
    rep movsb
    cld
    ret

    .global memset
memset:
    movq %rdi, %r9
    movzbl %sil, %eax
    movabsq $0x0101010101010101, %r8
    imulq %r8, %rax
    cmpb $0, TORO_FAST_STRINGS(%rip)
    je 1f
    movq %rdx, %rcx
    rep stosb
    movq %r9, %rax
    ret
1:  movq %rdx, %rcx
    shrq $3, %rcx
    jz 3f
2:  movq %rax, (%rdi)
    addq $8, %rdi
    decq %rcx
    jnz 2b
3:  movq %rdx, %rcx
    andq $7, %rcx
    rep stosb
    movq %r9, %rax
    ret

    .global memcmp, bcmp
memcmp:
bcmp:
    movq %rdx, %rcx
    xorl %eax, %eax
    testq %rcx, %rcx
    jz 1f
    repe cmpsb
    je 1f
    movzbl -1(%rdi), %eax
    movzbl -1(%rsi), %ecx
    subl %ecx, %eax
1:  ret
"#,
    abi = const toro_abi::ABI_VERSION,
    reserved = const SLOT_RESERVED,
    options(att_syntax)
);

/// Read by memcpy/memset: whether `rep movsb` is fast here.
#[no_mangle]
static TORO_FAST_STRINGS: AtomicBool = AtomicBool::new(true);

extern "C" {
    pub fn toro_switch(save: *mut usize, load: usize);
    pub fn toro_thread_trampoline();
}

/// Picks the copy strategy: QEMU's TCG announces itself in the hypervisor CPUID leaf.
pub fn detect_copy_strategy() -> &'static str {
    let leaf = core::arch::x86_64::__cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&leaf.ecx.to_le_bytes());
    sig[8..].copy_from_slice(&leaf.edx.to_le_bytes());
    let tcg = &sig == b"TCGTCGTCGTCG";
    TORO_FAST_STRINGS.store(!tcg, Ordering::Relaxed);
    if tcg { "tcg" } else { "native" }
}

/// Traps into the kernel (`int TRAP_VECTOR`). Each costs 35–65 µs under KVM PVM.
fn trap(number: u64, a0: u64, a1: u64) -> u64 {
    let ret: u64;
    // SAFETY: the kernel's trap gate preserves the stack and callee-saved
    // registers; every C caller-saved register is declared clobbered.
    unsafe {
        asm!("int {vector}", vector = const trap::TRAP_VECTOR, inlateout("rax") number => ret,
             in("rdi") a0, in("rsi") a1, clobber_abi("C"));
    }
    ret
}

/// Halts until an interrupt (wake-up IPI, routed device interrupt, timer);
/// `timer_ticks` > 0 first arms the APIC timer to end the halt after that
/// many ticks (one more VM exit under PVM).
pub fn halt(timer_ticks: u32) {
    trap(trap::HALT, timer_ticks as u64, 0);
}

/// Routes IOAPIC input `gsi` to `core`, or every core (see `trap::ROUTE_IRQ`).
pub fn route_irq(gsi: u32, core: Option<usize>) -> bool {
    let destination = core.map_or(trap::ALL_CORES, |c| c as u64);
    trap(trap::ROUTE_IRQ, gsi as u64, destination) != trap::ERROR
}

pub fn send_ipi(core: usize) {
    trap(trap::SEND_IPI, core as u64, 0);
}

pub fn exit(status: u8) -> ! {
    trap(trap::EXIT, status as u64, 0);
    unreachable!("the exit trap returned")
}

pub fn console_write(bytes: &[u8]) {
    trap(trap::CONSOLE_WRITE, bytes.as_ptr() as u64, bytes.len() as u64);
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD is clear) and has no side effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (hi as u64) << 32 | lo as u64
}

pub fn stack_pointer() -> usize {
    let rsp: usize;
    // SAFETY: reads rsp only.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    rsp
}

/// Personality routine the precompiled `core` refers to; with panic=abort
/// nothing unwinds, so it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Referenced by the precompiled `alloc`; with panic=abort nothing unwinds,
/// so reaching it is a runtime bug.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    exit(toro_abi::status::PANIC)
}
