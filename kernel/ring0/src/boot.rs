//! Entry points: the PVH entry (32-bit protected mode, paging off) for the
//! boot CPU, and the real-mode start page for the other CPUs. Both go
//! straight to long mode with the compile-time page tables.

use core::arch::global_asm;

use crate::paging::PML4_ADDR;

/// Where the AP start code is copied (below 1 MiB, free on microvm and q35).
pub const AP_START_PAGE: u64 = 0x8000;
/// Bytes of kernel stack per CPU (and the IST stack for exceptions).
pub const KSTACK_SIZE: usize = 16 << 10;
pub const IST_STACK_SIZE: usize = 8 << 10;

#[repr(C, align(16384))]
pub struct Stacks<const N: usize>(pub [[u8; N]; toro_abi::MAX_CPUS]);

#[no_mangle]
pub static mut KSTACKS: Stacks<KSTACK_SIZE> = Stacks([[0; KSTACK_SIZE]; toro_abi::MAX_CPUS]);
#[no_mangle]
pub static mut IST_STACKS: Stacks<IST_STACK_SIZE> = Stacks([[0; IST_STACK_SIZE]; toro_abi::MAX_CPUS]);

/// Next CPU index handed to an AP (the boot CPU is 0).
#[no_mangle]
pub static AP_NEXT_INDEX: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);

extern "C" {
    pub static ap_start_begin: u8;
    pub static ap_start_end: u8;
}

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 8
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .quad pvh_start

    .section .boot32, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    movl %ebx, %edi             /* hvm_start_info */
    movl %cr4, %eax
    orl $0x20, %eax             /* PAE */
    movl %eax, %cr4
    movl ${pml4}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx      /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    lgdt boot_gdt_ptr
    movl %cr0, %eax
    orl $0x80000021, %eax       /* PG | NE | PE */
    movl %eax, %cr0
    ljmp $0x08, $bsp_long_start

    .code64
    /* Kernel data segment everywhere, no FS/GS: both entries start so. */
    .macro LOAD_KERNEL_SEGMENTS
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    .endm

bsp_long_start:
    LOAD_KERNEL_SEGMENTS
    movl %edi, %edi
    leaq KSTACKS+{kstack}(%rip), %rsp
    call kmain
    ud2

ap_long_start:
    LOAD_KERNEL_SEGMENTS
    movl $1, %eax
    lock xaddl %eax, AP_NEXT_INDEX(%rip)
    cmpl ${max_cpus}, %eax
    jae 2f
    movl %eax, %edi
    leal 1(%eax), %ecx
    imulq ${kstack}, %rcx
    leaq KSTACKS(%rip), %rsp
    addq %rcx, %rsp
    call ap_main
2:  cli
    hlt
    jmp 2b

    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    /* Copied to AP_START_PAGE; runs in real mode with CS:IP = 0x0800:0. */
    .code16
    .global ap_start_begin, ap_start_end
ap_start_begin:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl ${pml4}, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    lgdtl ({ap_page} + ap_gdt_ptr - ap_start_begin)
    movl %cr0, %eax
    orl $0x80000021, %eax
    movl %eax, %cr0
    ljmpl $0x08, $ap_long_start
ap_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
ap_start_end:
    .code64
    .text
"#,
    pml4 = const PML4_ADDR,
    kstack = const KSTACK_SIZE,
    max_cpus = const toro_abi::MAX_CPUS,
    ap_page = const AP_START_PAGE,
    options(att_syntax)
);
