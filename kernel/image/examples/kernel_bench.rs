//! Kernel and runtime figures for BENCHMARKS.md, printed as Markdown:
//! QEMU start → every core in main → VM exit (median of N runs, the machine
//! options toro-mpirun uses) for 1/2/4
//! vCPUs under TCG and KVM, image sizes, cooperative switch cost and
//! cross-core wake-up latency.
//!
//!     cargo run --release -p toro-image --example kernel_bench [-- RUNS]
//!
//! Switch and wake-up figures are taken with the whole heap pre-touched at
//! boot (`pretouch=1024`), so background pre-touching does not disturb them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use toro_image::vmtest::{accels, image, kernel_only, Accel, Vm};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Wall times (ms) from spawning QEMU to the line containing `mark`, and to exit.
fn timed_boot(img: &std::path::Path, accel: Accel, smp: usize, mark: &str) -> (f64, f64) {
    let (a, cpu) = match accel {
        Accel::Tcg => ("tcg", "max"),
        Accel::Kvm => ("kvm", "host,-arch-capabilities"),
    };
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        // The machine options toro-mpirun uses (no ACPI tables, option ROMs or RTC).
        .args(["-M", "microvm,acpi=off,x-option-roms=off,rtc=off", "-accel", a, "-cpu", cpu, "-smp", &smp.to_string(), "-m", "128M"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(toro_image::vmtest::console_args("microvm", true))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
        .arg(img)
        .args(["-append", &format!("cpus={smp} -- boot")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut at_mark = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if at_mark.is_none() && line.contains(mark) {
            at_mark = Some(start.elapsed());
        }
    }
    child.wait().unwrap();
    let exit = start.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(at_mark.unwrap_or(exit)), ms(exit))
}

fn guest_line(img: &std::path::Path, accel: Accel, smp: usize, append: &str, prefix: &str) -> String {
    let run = Vm::new(img, accel).smp(smp).append(append).run();
    run.assert_status(0);
    run.assert_line(prefix).split(prefix).nth(1).unwrap_or("").trim().to_string()
}

/// Host baseline: two Linux threads on one CPU handing a turn back and
/// forth with sched_yield; ns per thread-to-thread switch. Run by the
/// parent under `taskset -c 0`.
fn host_switch(n: usize) -> f64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let turn = Arc::new(AtomicUsize::new(0));
    let t2 = turn.clone();
    let start = Instant::now();
    let other = std::thread::spawn(move || {
        for i in 0..n {
            while t2.load(Ordering::Acquire) != 2 * i + 1 {
                std::thread::yield_now();
            }
            t2.store(2 * i + 2, Ordering::Release);
        }
    });
    for i in 0..n {
        while turn.load(Ordering::Acquire) != 2 * i {
            std::thread::yield_now();
        }
        turn.store(2 * i + 1, Ordering::Release);
    }
    other.join().unwrap();
    start.elapsed().as_nanos() as f64 / (2 * n) as f64
}

/// Host baseline: one-way wake-up of a blocked Linux thread (Mutex + Condvar), µs.
fn host_wake(n: usize) -> f64 {
    use std::sync::{Arc, Condvar, Mutex};
    let pair = Arc::new((Mutex::new(0usize), Condvar::new()));
    let p2 = pair.clone();
    let start = Instant::now();
    let other = std::thread::spawn(move || {
        let (m, c) = &*p2;
        for i in 0..n {
            let mut g = m.lock().unwrap();
            while *g != 2 * i + 1 {
                g = c.wait(g).unwrap();
            }
            *g += 1;
            c.notify_one();
        }
    });
    let (m, c) = &*pair;
    for i in 0..n {
        let mut g = m.lock().unwrap();
        while *g != 2 * i {
            g = c.wait(g).unwrap();
        }
        *g += 1;
        c.notify_one();
    }
    other.join().unwrap();
    start.elapsed().as_secs_f64() * 1e6 / (2 * n) as f64
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--host-switch") {
        println!("{:.1}", host_switch(200_000));
        return;
    }
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let kbench = image("toro-kernel-bench", "kbench");
    let hello = image("hello", "hello");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Machine load average at start: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!();
    println!("| accel | vCPUs | QEMU start → every core in main (ms) | QEMU start → VM exit (ms) | QEMU + kernel alone (ms) |");
    println!("|---|---:|---:|---:|---:|");
    for accel in accels() {
        for smp in [1, 2, 4] {
            let (mut main, mut exit, mut bare) = (vec![], vec![], vec![]);
            for _ in 0..runs {
                let (m, e) = timed_boot(&kbench, accel, smp, "boot: main at");
                main.push(m);
                exit.push(e);
                bare.push(timed_boot(&kernel_only(), accel, smp, "no Toro application header").1);
            }
            println!("| {accel:?} | {smp} | {:.0} | {:.0} | {:.0} |", median(main), median(exit), median(bare));
        }
    }
    println!();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!("Image sizes: kernel {} KiB, hello image {} KiB, kbench image {} KiB.",
             size(&kernel_only()) / 1024, size(&hello) / 1024, size(&kbench) / 1024);
    println!();
    println!("| accel | cooperative switch (ns) | wake-up, spin=0: halt + IPI (µs) | wake-up, core spinning (µs) |");
    println!("|---|---:|---:|---:|");
    for accel in accels() {
        let switch = guest_line(&kbench, accel, 2, "cpus=2 pretouch=1024 -- switch 1000000", "yields each of 2 threads,");
        let halt = guest_line(&kbench, accel, 2, "cpus=2 spin=0 pretouch=1024 -- wake 2000", "spin=0:");
        let spin = guest_line(&kbench, accel, 2, "cpus=2 spin=10000000 pretouch=1024 -- wake 20000", "spin=10000000:");
        let num = |s: &str| s.split_whitespace().next().unwrap_or("?").to_string();
        println!("| {accel:?} | {} | {} | {} |", num(&switch), num(&halt), num(&spin));
    }
    let pinned = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe().unwrap())
        .arg("--host-switch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "n/a".into());
    println!("| host Linux threads (same run) | {pinned} (sched_yield, one CPU) | {:.2} (Condvar, blocked thread) | — |", host_wake(20_000));
}
