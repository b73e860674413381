//! From the kernel's hand-off to `main`, and back out: boot info, command
//! line, main instances per rank, exit status, panics.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

use toro_abi::cmdline::{percent_decode, rank_list, Cmdline};
use toro_abi::{layout, status, BootInfo};

use crate::heap::POOLS;
use crate::{arch, console, sched, time};

/// Filled in by the kernel before any core enters ring 3 (the app header points here).
#[no_mangle]
static mut TORO_BOOT_INFO: BootInfo = BootInfo::zeroed();

static INIT_DONE: AtomicBool = AtomicBool::new(false);
static MAINS_LEFT: AtomicUsize = AtomicUsize::new(0);
static EXIT_STATUS: AtomicI32 = AtomicI32::new(0);

/// Default idle spin before halting: waking a halted core costs ≈136 µs
/// under KVM PVM, ≈1 µs on VMX hosts; `spin=NS` on the command line overrides.
const DEFAULT_SPIN_NS: u64 = 200_000;

extern "Rust" {
    /// Defined by the application through `toro_rt::main!`.
    fn __toro_main() -> i32;
}

pub fn boot_info() -> &'static BootInfo {
    // SAFETY: written by the kernel before ring 3 started, read-only since.
    unsafe { &*core::ptr::addr_of!(TORO_BOOT_INFO) }
}

pub fn cmdline() -> Cmdline<'static> {
    Cmdline::new(boot_info().cmdline())
}

fn decode(word: &str) -> String {
    let mut buf = alloc::vec![0u8; word.len()];
    match percent_decode(word, &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::from(word),
    }
}

/// The application's arguments (after `--` on the command line).
pub fn args() -> Vec<String> {
    cmdline().app_args().map(decode).collect()
}

/// An environment variable given with `env.NAME=VALUE` (`-x NAME=VALUE`).
pub fn env_var(name: &str) -> Option<String> {
    cmdline().env().filter(|(k, _)| *k == name).last().map(|(_, v)| decode(v))
}

/// Free bytes in `core`'s heap pool (remote frees counted back in).
pub fn heap_free_bytes(core: usize) -> usize {
    POOLS.free_bytes(core)
}

/// The rank of the calling thread (threads inherit their spawner's rank).
pub fn rank() -> Option<u32> {
    sched::current().rank()
}

/// Ends the whole VM now with `code` (0..=127).
pub fn exit(code: i32) -> ! {
    console::flush();
    console::final_line(b"");
    arch::exit(code.clamp(0, 127) as u8)
}

fn fatal(why: core::fmt::Arguments) -> ! {
    console::fatal_line(format_args!("toro: {why}"));
    arch::exit(status::BAD_MACHINE)
}

#[no_mangle]
extern "C" fn toro_rt_start(core: usize, info: *const BootInfo) -> ! {
    debug_assert_eq!(info, boot_info() as *const BootInfo);
    let info = boot_info();
    let cores = info.cpu_count as usize;
    if core == 0 {
        let copy = arch::detect_copy_strategy();
        time::init(info.tsc_hz, info.tsc_at_boot, info.apic_timer_hz);
        // SAFETY: the kernel handed us [heap_start, heap_end), mapped, unused.
        unsafe { POOLS.init(info.heap_start as usize, info.heap_end as usize, cores) };
        let spin = cmdline().get_u64("spin").unwrap_or_else(|_| fatal(format_args!("spin= is not a number")));
        sched::init(cores, layout::STACK_SLOTS as usize, spin.unwrap_or(DEFAULT_SPIN_NS));
        crate::waiters::init(cores);
        let virtio_console = console::init();
        if cmdline().flag("verbose") {
            console::info_line(format_args!(
                "toro: {cores} cores, TSC {} MHz, APIC timer {} MHz, heap {} MiB, copy {copy}, console {}",
                info.tsc_hz / 1_000_000,
                info.apic_timer_hz / 1_000_000,
                (info.heap_end - info.heap_start) >> 20,
                if virtio_console { "virtio" } else { "serial" }
            ));
        }
        INIT_DONE.store(true, Ordering::Release);
    } else {
        while !INIT_DONE.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
    pretouch(core);
    if core == 0 {
        start_mains(cores);
    }
    sched::run_scheduler(core)
}

/// The first touch of a page is slow under virtualisation (a host page
/// fault, or a shadow-page-table fill under PVM): every page of each core's
/// pool is touched once, `pretouch=MIB` (default 2) per core at boot, the
/// rest by the core's scheduler whenever it has nothing to run.
const DEFAULT_PRETOUCH_MIB: u64 = 2;

static PRETOUCH_NEXT: [AtomicUsize; toro_abi::MAX_CPUS] = [const { AtomicUsize::new(0) }; toro_abi::MAX_CPUS];

fn pretouch(core: usize) {
    let (start, _) = POOLS.region(core);
    PRETOUCH_NEXT[core].store(start, Ordering::Relaxed);
    let mib = cmdline().get_u64("pretouch").ok().flatten().unwrap_or(DEFAULT_PRETOUCH_MIB);
    pretouch_step(core, (mib << 20) as usize / layout::PAGE_SIZE as usize);
}

/// Touches up to `pages` more pages of `core`'s pool; false when all are done.
/// Only `core` itself calls this.
pub(crate) fn pretouch_step(core: usize, pages: usize) -> bool {
    let (_, end) = POOLS.region(core);
    let from = PRETOUCH_NEXT[core].load(Ordering::Relaxed);
    if from >= end {
        return false;
    }
    let to = end.min(from + pages * layout::PAGE_SIZE as usize);
    for page in (from..to).step_by(layout::PAGE_SIZE as usize) {
        // SAFETY: the page is mapped heap memory. A locked `or` of zero is a
        // write (so the page is touched for writing) that changes nothing,
        // atomically: other cores may be writing this byte right now (a
        // remote free's link, a shared structure), and a plain read and
        // write-back would undo their store. (An atomic `fetch_or(0)` may be
        // compiled to a fenced load, which does not touch for writing.)
        unsafe {
            core::arch::asm!("lock or byte ptr [{0}], 0", in(reg) page, options(nostack));
        }
    }
    PRETOUCH_NEXT[core].store(to, Ordering::Relaxed);
    true
}

fn start_mains(cores: usize) {
    let ranks: Vec<u32> = match cmdline().get("ranks") {
        None => alloc::vec![0],
        Some(list) => rank_list(list)
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| fatal(format_args!("ranks={list}: {e}"))),
    };
    MAINS_LEFT.store(ranks.len(), Ordering::Release);
    for (i, rank) in ranks.into_iter().enumerate() {
        let handle = sched::spawn_on(i % cores, move || {
            sched::current().set_rank(rank);
            // SAFETY: __toro_main is the application's `fn() -> i32` (main! macro).
            let code = unsafe { __toro_main() };
            console::flush();
            main_returned(code);
        });
        drop(handle);
    }
}

fn main_returned(code: i32) {
    if code != 0 {
        let rank = sched::current().rank().map_or(-1, |r| r as i64);
        console::info_line(format_args!("toro: rank {rank} returned {code}"));
        let _ = EXIT_STATUS.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }
    if MAINS_LEFT.fetch_sub(1, Ordering::AcqRel) == 1 {
        exit(EXIT_STATUS.load(Ordering::Acquire));
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let core = sched::current_core();
    let rank = match INIT_DONE.load(Ordering::Acquire) {
        true => sched::current().rank().map_or(-1, |r| r as i64),
        false => -1,
    };
    let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
    console::fatal_line(format_args!(
        "toro: panic on core {core}, rank {rank}, at {file}:{line}: {}",
        info.message()
    ));
    arch::exit(status::PANIC)
}
