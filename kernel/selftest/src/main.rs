//! Kernel and runtime checks that only a real VM can run. The host test
//! (kernel/image/tests/vm.rs) boots this image with a scenario name after
//! `--` and checks what it prints and its exit status.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spin::Mutex;
use toro_rt::{core_count, current_core, math, println};

toro_rt::main!(main);

fn main() -> i32 {
    let args = toro_rt::args();
    match args.first().map(|s| s.as_str()).unwrap_or("all") {
        "all" => {
            every_core_reports();
            floating_point();
            cross_core_heap(100_000);
            migrate_through_all_cores();
            block_wake_across_cores(2_000);
            println!("selftest: all passed");
            0
        }
        "panic" => {
            let last = core_count() - 1;
            toro_rt::spawn_on(last, move || panic!("deliberate panic from core {last}")).join();
            1
        }
        // For the launcher's tests: rank R panics, the others keep running
        // (up to a minute) until the launcher stops their VMs.
        "panic-rank" => {
            let victim: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            if toro_rt::rank() == Some(victim) {
                panic!("deliberate panic in rank {victim}");
            }
            spin_for(60);
            0
        }
        "null-write" => {
            on_last_core(|| write_to(0));
            1
        }
        "kernel-write" => {
            on_last_core(|| write_to(0x10_0000));
            1
        }
        "stack-overflow" => {
            on_last_core(|| {
                recurse(0);
            });
            1
        }
        "exit-code" => args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
        // For the launcher's tests: a job that keeps running (to be killed,
        // timed out or interrupted). Spins rather than halts, as MPI ranks do.
        "sleep" => {
            let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3600);
            println!("selftest: sleeping {secs} s");
            spin_for(secs);
            0
        }
        // For the launcher's tests: the ranks of this VM pass a token around
        // (rank traffic inside the VM, every rank waiting on the others).
        "ring" => ring(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000)),
        // For the launcher's boot benchmark: one line per rank, first thing in main.
        "boot" => {
            println!("selftest: in main");
            0
        }
        other => {
            println!("selftest: unknown scenario {other}");
            2
        }
    }
}

/// Spins (yielding to the core's other threads) for `secs` seconds.
fn spin_for(secs: u64) {
    let until = toro_rt::now_ns().saturating_add(secs.saturating_mul(1_000_000_000));
    while toro_rt::now_ns() < until {
        toro_rt::yield_now();
    }
}

/// This VM's ranks, from `ranks=` on the command line (`0-3`, `1,3,5`).
fn local_ranks() -> Vec<u32> {
    let list = toro_rt::cmdline().get("ranks").unwrap_or("0");
    let mut ranks = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().expect("ranks="), b.parse().expect("ranks="));
        ranks.extend(a..=b);
    }
    ranks
}

static RING_TOKEN: AtomicUsize = AtomicUsize::new(0);

/// Rank i of the n in this VM moves the token from round*n + i to the next
/// value, `rounds` times; all wait until the last pass.
fn ring(rounds: usize) -> i32 {
    let ranks = local_ranks();
    let me = toro_rt::rank().expect("main runs as a rank");
    let i = ranks.iter().position(|&r| r == me).expect("my rank is in ranks=");
    let n = ranks.len();
    let start = toro_rt::now_ns();
    for round in 0..rounds {
        let mine = round * n + i;
        while RING_TOKEN.load(Ordering::Acquire) != mine {
            toro_rt::yield_now();
        }
        RING_TOKEN.store(mine + 1, Ordering::Release);
    }
    while RING_TOKEN.load(Ordering::Acquire) < rounds * n {
        toro_rt::yield_now();
    }
    let cmd = toro_rt::cmdline();
    println!("ring: {rounds} rounds through {n} ranks of vm {} (world {}) on core {}, {} ns per pass",
             cmd.get("vm").unwrap_or("0"), cmd.get("world").unwrap_or("1"), current_core(),
             (toro_rt::now_ns() - start) / (rounds * n).max(1) as u64);
    0
}

fn on_last_core(f: impl FnOnce() + Send + 'static) {
    toro_rt::spawn_on(core_count() - 1, f).join();
}

fn write_to(addr: usize) {
    println!("writing to {addr:#x} from core {}", current_core());
    // SAFETY: deliberately invalid: the kernel must report the fault and end the VM.
    unsafe { (addr as *mut u64).write_volatile(0xdead) };
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 512];
    core::hint::black_box(&frame);
    recurse(depth + 1) + frame[7]
}

fn every_core_reports() {
    let handles: Vec<_> = (0..core_count())
        .map(|c| toro_rt::spawn_on(c, move || {
            println!("core {} reporting (asked for {c})", current_core());
            current_core() == c
        }))
        .collect();
    assert!(handles.into_iter().all(|h| h.join()), "a thread ran on the wrong core");
}

/// Floating point on every core: the bits must agree across cores, and the
/// host test recomputes the same expressions (IEEE-exact operations and the
/// same libm) and compares the printed bits.
pub fn fp_bits() -> [u64; 8] {
    let v: Vec<f64> = (1..=1000).map(|i| i as f64 / 7.0).collect();
    let dot: f64 = v.iter().map(|x| x * x).sum();
    [math::sqrt(2.0), dot, 1.0 / 3.0, math::fma(0.1, 0.2, 0.3), math::exp(1.0), math::sin(1.0),
     math::log(10.0), math::pow(1.1, 2.5)]
        .map(f64::to_bits)
}

fn floating_point() {
    let handles: Vec<_> = (0..core_count()).map(|c| toro_rt::spawn_on(c, fp_bits)).collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]), "cores disagree on floating point");
    let hex: Vec<alloc::string::String> = results[0].iter().map(|b| alloc::format!("{b:016x}")).collect();
    println!("fp bits {}", hex.join(" "));
}

/// Core 0 allocates, the last core frees, `pairs` times; afterwards every
/// pool has exactly the free bytes it had before.
fn cross_core_heap(pairs: usize) {
    let round = |pairs: usize| {
        let queue = Arc::new(Mutex::new(VecDeque::<usize>::with_capacity(1024)));
        let done = Arc::new(AtomicBool::new(false));
        let (q, d) = (queue.clone(), done.clone());
        let consumer = toro_rt::spawn_on(core_count() - 1, move || {
            let mut freed = 0;
            loop {
                let next = q.lock().pop_front();
                match next {
                    Some(p) => {
                        // SAFETY: the producer leaked this Box<[u8; N]>-sized Vec for us.
                        drop(unsafe { Vec::from_raw_parts(p as *mut u8, 0, 1 + freed % 200) });
                        freed += 1;
                    }
                    // Done was set after the last push: one more look finds any tail.
                    None if d.load(Ordering::Acquire) => {
                        if q.lock().is_empty() {
                            break;
                        }
                    }
                    None => toro_rt::yield_now(),
                }
            }
            freed
        });
        let producer = toro_rt::spawn_on(0, move || {
            for i in 0..pairs {
                let v: Vec<u8> = Vec::with_capacity(1 + i % 200);
                let p = v.leak().as_mut_ptr() as usize;
                loop {
                    let mut g = queue.lock();
                    if g.len() < 1000 {
                        g.push_back(p);
                        break;
                    }
                    drop(g);
                    toro_rt::yield_now();
                }
            }
            done.store(true, Ordering::Release);
        });
        producer.join();
        consumer.join()
    };
    round(1000); // warm up: run queues, slot lists and the like reach their size
    // Fixed arrays: measuring must not allocate.
    let mut before = [0usize; 64];
    let mut after = [0usize; 64];
    let n = core_count();
    before[..n].iter_mut().enumerate().for_each(|(c, b)| *b = toro_rt::heap_free_bytes(c));
    let freed = round(pairs);
    after[..n].iter_mut().enumerate().for_each(|(c, a)| *a = toro_rt::heap_free_bytes(c));
    assert_eq!(freed, pairs);
    assert_eq!(before[..n], after[..n], "pools did not return to their free bytes");
    println!("heap: {pairs} cross-core alloc/free pairs, pools back to {:?} free bytes", &before[..n]);
}

fn migrate_through_all_cores() {
    let path = toro_rt::spawn_on(0, || {
        let mut seen = Vec::new();
        for c in (0..core_count()).chain(core::iter::once(0)) {
            toro_rt::migrate(c);
            seen.push(current_core());
        }
        seen
    })
    .join();
    let want: Vec<usize> = (0..core_count()).chain(core::iter::once(0)).collect();
    assert_eq!(path, want);
    println!("migrated through cores {path:?}");
}

/// Two threads on different cores hand a token back and forth, each
/// blocking until the other wakes it.
fn block_wake_across_cores(rounds: usize) {
    struct Side {
        turn: AtomicUsize,
    }
    let shared = Arc::new(Side { turn: AtomicUsize::new(0) });
    let peers: Arc<[Mutex<Option<Arc<toro_rt::sched::Thread>>>; 2]> = Arc::new([Mutex::new(None), Mutex::new(None)]);
    let ready = Arc::new(AtomicUsize::new(0));
    let player = |me: usize, core: usize| {
        let (s, p, r) = (shared.clone(), peers.clone(), ready.clone());
        toro_rt::spawn_on(core, move || {
            *p[me].lock() = Some(toro_rt::sched::current_arc());
            r.fetch_add(1, Ordering::AcqRel);
            while r.load(Ordering::Acquire) < 2 {
                toro_rt::yield_now();
            }
            let start = toro_rt::now_ns();
            let mut blocks = 0;
            for round in 0..rounds {
                let mine = 2 * round + me;
                while s.turn.load(Ordering::Acquire) != mine {
                    toro_rt::block();
                    blocks += 1;
                }
                s.turn.store(mine + 1, Ordering::Release);
                let other = p[1 - me].lock().clone().unwrap();
                toro_rt::wake(&other);
            }
            (blocks, toro_rt::now_ns() - start)
        })
    };
    let last = core_count() - 1;
    let a = player(0, 0);
    let b = player(1, last);
    let (blocks_a, ns) = a.join();
    let (blocks_b, _) = b.join();
    assert_eq!(shared.turn.load(Ordering::Acquire), 2 * rounds);
    println!("block/wake: {rounds} round trips core 0 <-> core {last}, {} blocks, {} ns per round trip",
             blocks_a + blocks_b, ns / rounds as u64);
}
