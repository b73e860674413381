//! Toro's ring-3 runtime. An application is a `#![no_std]` binary that
//! depends on this crate and names its main function with [`main!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use toro_rt::println;
//! toro_rt::main!(main);
//! fn main() { println!("hello from core {}", toro_rt::current_core()); }
//! ```
//!
//! The kernel enters [`_start`](arch) on every core. Core 0 sets up the heap
//! pools and the scheduler, then starts `main` once per rank this VM hosts
//! (`ranks=` on the kernel command line; one instance, rank 0, without it).
//! The VM exits when every instance has returned: status 0 when all
//! returned 0, else the first non-zero status.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod pool;
pub mod runq;
pub mod state;

#[cfg(not(test))]
mod arch;
#[cfg(not(test))]
pub mod console;
#[cfg(not(test))]
mod heap;
#[cfg(not(test))]
mod start;
#[cfg(not(test))]
pub mod sched;
#[cfg(not(test))]
pub mod time;
#[cfg(not(test))]
pub mod virtio;
#[cfg(not(test))]
pub mod waiters;

#[cfg(not(test))]
pub use {
    console::{_print, flush},
    sched::{block, core_count, current_core, migrate, spawn, spawn_on, trap_counts, wake, yield_now, JoinHandle, TrapCounts},
    start::{args, boot_info, cmdline, env_var, exit, heap_free_bytes, rank},
    time::{now_ns, now_secs},
};

/// Floating-point functions (`libm`), as `toro_rt::math::sqrt(x)`.
pub mod math {
    pub use libm::*;
}

/// What `main` may return: `()`, an exit status, or a `Result`.
pub trait Termination {
    fn report(self) -> i32;
}

impl Termination for () {
    fn report(self) -> i32 {
        0
    }
}

impl Termination for i32 {
    fn report(self) -> i32 {
        self
    }
}

impl<E: core::fmt::Debug> Termination for Result<(), E> {
    fn report(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                #[cfg(not(test))]
                println!("Error: {e:?}");
                #[cfg(test)]
                let _ = e;
                1
            }
        }
    }
}

/// Names the application's main function: `toro_rt::main!(main);`
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[no_mangle]
        pub fn __toro_main() -> i32 {
            $crate::Termination::report($main())
        }
    };
}

/// Prints to the console; output is sent a whole line at a time.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console, prefixed `[rank N] ` when the thread
/// belongs to a rank. Lines from different cores never interleave.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
