//! Measurements run by `cargo run --release -p toro-image --example kernel_bench`:
//! - `boot`: one line per core as soon as a thread runs there (with the
//!   guest's own time since the kernel started), then exit;
//! - `print N`: console lines of 64 bytes;
//! - `switch N`: cooperative switches between two threads of one core;
//! - `wake N`: a token handed between threads on core 0 and the last core,
//!   each blocking until woken (with the kernel command line's idle spin
//!   budget: `spin=0` measures halt + IPI, a large budget pure wake-ups).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use toro_rt::{core_count, current_core, now_ns, println};

toro_rt::main!(main);

fn main() -> i32 {
    let args = toro_rt::args();
    let count = |default: usize| args.get(1).and_then(|s| s.parse().ok()).unwrap_or(default);
    match args.first().map(|s| s.as_str()) {
        Some("boot") => boot(),
        Some("switch") => switch(count(1_000_000)),
        Some("wake") => wake(count(2_000)),
        Some("print") => print(count(100)),
        _ => {
            println!("usage: -- boot | switch N | wake N | print N");
            2
        }
    }
}

fn boot() -> i32 {
    let at_main = now_ns();
    let handles: Vec<_> = (0..core_count())
        .map(|c| toro_rt::spawn_on(c, move || now_ns()))
        .collect();
    let times: Vec<u64> = handles.into_iter().map(|h| h.join()).collect();
    let last = times.iter().max().copied().unwrap_or(at_main);
    println!("boot: main at {} us, every core running by {} us after kernel entry", at_main / 1000, last / 1000);
    0
}

/// Console cost: `n` lines of 64 bytes (with the `[rank 0] ` prefix).
fn print(n: usize) -> i32 {
    let start = now_ns();
    for i in 0..n {
        println!("console line {i:06} ..........................................");
    }
    let ns = now_ns() - start;
    println!("print: {n} lines of 64 bytes, {:.1} us per line", ns as f64 / n as f64 / 1000.0);
    0
}

fn switch(n: usize) -> i32 {
    let a = toro_rt::spawn_on(0, move || {
        let start = now_ns();
        for _ in 0..n {
            toro_rt::yield_now();
        }
        now_ns() - start
    });
    let b = toro_rt::spawn_on(0, move || {
        for _ in 0..n {
            toro_rt::yield_now();
        }
    });
    let ns = a.join();
    b.join();
    // Each yield is a switch to the core's scheduler and one to the other thread.
    println!("switch: {n} yields each of 2 threads, {:.1} ns per thread-to-thread switch", ns as f64 / (2 * n) as f64);
    0
}

fn wake(rounds: usize) -> i32 {
    let last = core_count() - 1;
    let turn = Arc::new(AtomicUsize::new(0));
    let threads: Arc<[spin_cell::Slot; 2]> = Arc::new([spin_cell::Slot::new(), spin_cell::Slot::new()]);
    let ready = Arc::new(AtomicUsize::new(0));
    let player = |me: usize, core: usize| {
        let (turn, threads, ready) = (turn.clone(), threads.clone(), ready.clone());
        toro_rt::spawn_on(core, move || {
            threads[me].set(toro_rt::sched::current_arc());
            ready.fetch_add(1, Ordering::AcqRel);
            while ready.load(Ordering::Acquire) < 2 {
                toro_rt::yield_now();
            }
            let start = now_ns();
            for round in 0..rounds {
                let mine = 2 * round + me;
                while turn.load(Ordering::Acquire) != mine {
                    toro_rt::block();
                }
                turn.store(mine + 1, Ordering::Release);
                toro_rt::wake(&threads[1 - me].get());
            }
            now_ns() - start
        })
    };
    let a = player(0, 0);
    let b = player(1, last);
    let ns = a.join();
    b.join();
    let spin = toro_rt::cmdline().get("spin").unwrap_or("default");
    println!("wake: core 0 <-> core {last} ({} cores), spin={spin}: {:.2} us one-way wake-up ({rounds} round trips)",
             core_count(), ns as f64 / (2 * rounds) as f64 / 1000.0);
    let _ = current_core();
    0
}

mod spin_cell {
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicPtr, Ordering};
    use toro_rt::sched::Thread;

    /// A thread handle set once, read many times.
    pub struct Slot(AtomicPtr<Thread>);

    impl Slot {
        pub const fn new() -> Self {
            Slot(AtomicPtr::new(core::ptr::null_mut()))
        }
        pub fn set(&self, t: Arc<Thread>) {
            self.0.store(Arc::into_raw(t) as *mut Thread, Ordering::Release);
        }
        pub fn get(&self) -> Arc<Thread> {
            let p = self.0.load(Ordering::Acquire);
            assert!(!p.is_null());
            // SAFETY: `p` came from Arc::into_raw in `set` and that reference is
            // never released (the slot lives as long as the benchmark).
            unsafe {
                Arc::increment_strong_count(p);
                Arc::from_raw(p)
            }
        }
    }
}
