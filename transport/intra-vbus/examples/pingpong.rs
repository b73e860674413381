//! OSU-style host benchmark of the bus between two std threads (pinned to
//! CPUs 0 and 1 when possible): one-way latency (ping-pong, half the round
//! trip) and unidirectional bandwidth (window of back-to-back sends, then an
//! ack), next to a bare cache-line ping-pong for scale. `--scan` compares
//! forced-eager and forced-rendezvous around the threshold.
//!
//! OSU reuses one untouched send buffer, which flatters rendezvous: the
//! receiver's cache keeps a clean copy of the sender's buffer, so nothing
//! crosses between cores. The "fresh" figures rewrite the send buffer before
//! every send (as an application producing data does; the time spent writing
//! is not counted); the threshold is chosen on those.
//!
//! cargo run -p intra-vbus --release --example pingpong [-- --scan | --latency | --software | --rate | --line]

use std::thread;
use std::time::{Duration, Instant};

use intra_vbus::{floor, Bus, Config, CoreId, Endpoint, Envelope, Notify, SendError, DEFAULT_EAGER_MAX};

/// Both threads poll; `wait` is only reached after `spin_polls` empty polls.
struct Spin;
impl Notify for Spin {
    fn notify(&self, _core: CoreId) {}
    fn wait(&self, _core: CoreId) {
        thread::yield_now();
    }
}

fn pin_to_cpu(cpu: usize) {
    extern "C" {
        fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    }
    let mask: u64 = 1 << cpu;
    // SAFETY: glibc's sched_setaffinity reads `size` bytes of the mask, which
    // points at a live u64; pid 0 is the calling thread.
    let rc = unsafe { sched_setaffinity(0, 8, &mask) };
    if rc != 0 {
        eprintln!("(could not pin to CPU {cpu})");
    }
}

const ENV: Envelope = Envelope { src_rank: 0, dst_rank: 1, tag: 0, comm: 0, kind: 0 };

fn iterations(size: usize) -> (usize, usize) {
    // (warm-up, measured), as in OSU: fewer for large messages.
    if size <= 8192 {
        (1_000, 10_000)
    } else if size <= (1 << 20) {
        (100, 1_000)
    } else {
        (10, 100)
    }
}

/// Runs `f(endpoint)` on two pinned threads; returns core 0's result.
fn two_cores<F>(config: Config, f: F) -> f64
where
    F: Fn(&mut Endpoint<'_, Spin>) -> f64 + Sync,
{
    let bus = Bus::new(config, Spin).unwrap();
    thread::scope(|s| {
        let peer = s.spawn(|| {
            pin_to_cpu(1);
            f(&mut bus.endpoint(1).unwrap())
        });
        pin_to_cpu(0);
        let r = f(&mut bus.endpoint(0).unwrap());
        peer.join().unwrap();
        r
    })
}

/// The machine is shared: each figure is the best of this many runs
/// (lowest latency, highest bandwidth), each run itself an OSU-style average.
const RUNS: usize = 5;

/// The lowest of `runs` calls of `run`.
fn lowest(runs: usize, mut run: impl FnMut() -> f64) -> f64 {
    (0..runs).map(|_| run()).fold(f64::INFINITY, f64::min)
}

/// One-way latency in µs: half the mean round trip, best of [`RUNS`].
fn latency(config: Config, size: usize, fresh: bool) -> f64 {
    lowest(RUNS, || latency_run(config, size, fresh))
}

/// Bandwidth in GB/s, best of [`RUNS`].
fn bandwidth(config: Config, size: usize, fresh: bool) -> f64 {
    (0..RUNS).map(|_| bandwidth_run(config, size, fresh)).fold(0.0, f64::max)
}

fn latency_run(config: Config, size: usize, fresh: bool) -> f64 {
    let (warm, iters) = iterations(size);
    two_cores(config, |ep| {
        let mut sbuf = vec![1u8; size];
        let mut rbuf = vec![0u8; size];
        let me = ep.core();
        let mut start = Instant::now();
        let mut excluded = Duration::ZERO;
        for i in 0..warm + iters {
            if i == warm {
                start = Instant::now();
                excluded = Duration::ZERO;
            }
            if fresh {
                let t = Instant::now();
                sbuf.fill(i as u8);
                excluded += t.elapsed();
            }
            if me == 0 {
                ep.send(1, ENV, &sbuf).unwrap();
                let m = ep.recv();
                ep.receive_into(m, &mut rbuf).unwrap();
            } else {
                let m = ep.recv();
                ep.receive_into(m, &mut rbuf).unwrap();
                ep.send(0, ENV, &sbuf).unwrap();
            }
        }
        (start.elapsed() - excluded).as_secs_f64() * 1e6 / (2 * iters) as f64
    })
}

/// Bandwidth in GB/s (10^9 B/s): windows of 64 back-to-back sends.
fn bandwidth_run(config: Config, size: usize, fresh: bool) -> f64 {
    const WINDOW: usize = 64;
    let (warm, iters) = iterations(size);
    let (warm, iters) = (warm.min(20), (iters / 20).max(10));
    two_cores(config, |ep| {
        let mut sbufs = vec![vec![1u8; size]; if fresh { WINDOW } else { 1 }];
        let mut rbuf = vec![0u8; size];
        let mut start = Instant::now();
        let mut excluded = Duration::ZERO;
        for i in 0..warm + iters {
            if i == warm {
                start = Instant::now();
                excluded = Duration::ZERO;
            }
            if ep.core() == 0 {
                if fresh {
                    let t = Instant::now();
                    sbufs.iter_mut().for_each(|b| b.fill(i as u8));
                    excluded += t.elapsed();
                }
                let mut handles = Vec::with_capacity(WINDOW);
                let mut sent = 0;
                while sent < WINDOW {
                    let sbuf = &sbufs[sent % sbufs.len()];
                    // SAFETY: `sbufs` outlive the handles, all completed below,
                    // and are written only after that.
                    match unsafe { ep.try_isend(1, ENV, sbuf) } {
                        Ok(h) => {
                            handles.push(h);
                            sent += 1;
                        }
                        Err(SendError::WouldBlock) => {
                            handles.retain(|h| !ep.test(h));
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                for h in handles {
                    ep.wait_send(h);
                }
                let ack = ep.recv();
                ep.release(ack);
            } else {
                for _ in 0..WINDOW {
                    let m = ep.recv();
                    ep.receive_into(m, &mut rbuf).unwrap();
                }
                ep.send(0, ENV, &[0; 4]).unwrap();
            }
        }
        (size * WINDOW * iters) as f64 / (start.elapsed() - excluded).as_secs_f64() / 1e9
    })
}

/// Bare cache-line ping-pong between the two threads: the floor for latency.
fn cache_line_one_way_ns() -> f64 {
    let line = floor::CacheLine::one_line();
    pinned_ping_pong_ns(|i| line.answer(i), |i| line.ask(i))
}

/// The same ping-pong where the answer goes back in a second line, as on the
/// bus (see `intra_vbus::floor`).
fn two_lines_one_way_ns() -> f64 {
    let lines = floor::CacheLine::two_lines();
    pinned_ping_pong_ns(|i| lines.answer(i), |i| lines.ask(i))
}

/// The floor for a ring per direction: the bus's layout with nothing but the
/// protocol (see `intra_vbus::floor`).
fn bare_ring_one_way_ns() -> f64 {
    let ring = floor::BareRing::default();
    pinned_ping_pong_ns(|i| ring.answer(i), |i| ring.ask(i))
}

/// One-way ns of 200,000 round trips: `ask(i)` on CPU 0 (timed), `answer(i)` on
/// CPU 1, round `i` by round.
fn pinned_ping_pong_ns(answer: impl Fn(u64) + Sync, ask: impl Fn(u64)) -> f64 {
    let rounds = 200_000u64;
    let elapsed = thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(1);
            (0..rounds).for_each(&answer);
        });
        pin_to_cpu(0);
        let start = Instant::now();
        (0..rounds).for_each(&ask);
        start.elapsed()
    });
    elapsed.as_secs_f64() * 1e9 / (2 * rounds) as f64
}

/// The instructions of one 8-byte message, send to release, without the
/// line transfer: both endpoints on this thread, so every line is in its
/// cache. What the latency figure adds to this is the core-to-core traffic.
fn software_one_way_ns(config: Config) -> f64 {
    let bus = Bus::new(config, Spin).unwrap();
    let (mut a, mut b) = (bus.endpoint(0).unwrap(), bus.endpoint(1).unwrap());
    let mut buf = [0u8; 8];
    let rounds = 1_000_000;
    let start = Instant::now();
    for i in 0..rounds {
        a.send(1, ENV, &(i as u64).to_le_bytes()).unwrap();
        let m = b.recv();
        b.receive_into(m, &mut buf).unwrap();
        b.send(0, ENV, &buf).unwrap();
        let m = a.recv();
        a.receive_into(m, &mut buf).unwrap();
    }
    start.elapsed().as_secs_f64() * 1e9 / (2 * rounds) as f64
}

fn config(eager_max: usize) -> Config {
    Config { queue_size: 64, eager_max, spin_polls: 1_000_000, ..Config::new(2) }
}

const MODES: [&str; 5] = ["--scan", "--latency", "--software", "--rate", "--line"];

fn main() {
    if let Some(bad) = std::env::args().skip(1).find(|a| !MODES.contains(&a.as_str())) {
        eprintln!("pingpong: unknown argument {bad:?} (modes: {}; none: the full table)", MODES.join(" "));
        std::process::exit(2);
    }
    let scan = std::env::args().any(|a| a == "--scan");
    let default = config(DEFAULT_EAGER_MAX);
    if std::env::args().any(|a| a == "--software") {
        let ns = lowest(RUNS, || software_one_way_ns(default));
        println!("8 B one-way, software only (both endpoints on one thread): {ns:.1} ns (best of {RUNS} runs)");
        return;
    }
    if std::env::args().any(|a| a == "--line") {
        // Just the yardstick, quickly: benches/osu/run.sh records it before each run,
        // since the host moves this VM's two vCPUs between near and far cores.
        let line = lowest(RUNS, cache_line_one_way_ns);
        println!("cache-line ping-pong one-way: {line:.0} ns (best of {RUNS} runs)");
        return;
    }
    if std::env::args().any(|a| a == "--rate") {
        // Small-message rate, osu_bw's window shape: for comparing with the
        // MPI layer's (mpi/examples/message_rate.rs) and finding which is the limit.
        for size in [1, 8, 64, 128, 256] {
            let gbs = bandwidth(default, size, false);
            println!("{size:>4} B: {:.1} M messages/s (best of {RUNS} runs)", gbs * 1e3 / size as f64);
        }
        return;
    }
    if std::env::args().any(|a| a == "--latency") {
        // 8 B only, for profiling the small-message path.
        let line = lowest(RUNS, cache_line_one_way_ns);
        let two = lowest(RUNS, two_lines_one_way_ns);
        let bare = lowest(RUNS, bare_ring_one_way_ns);
        let bus = lowest(20, || latency_run(default, 8, false));
        println!(
            "8 B one-way {:.0} ns, cache line {line:.0} ns, answer in a second line {two:.0} ns, bare ring {bare:.0} ns (best of 20 and {RUNS} runs)",
            bus * 1e3
        );
        return;
    }
    let line = lowest(RUNS, cache_line_one_way_ns);
    println!("cache-line ping-pong one-way: {line:.0} ns (best of {RUNS} runs everywhere)");
    println!("bus, eager_max = {} B, queue_size = {}", default.eager_max, default.queue_size);
    println!("{:>10} {:>22} {:>22}", "size", "OSU (same buffer)", "fresh data");
    for size in [8, 1024] {
        let (osu, fresh) = (latency(default, size, false), latency(default, size, true));
        println!("{:>10} {:>16.3} µs/1w {:>16.3} µs/1w", size, osu, fresh);
    }
    for size in [64 << 10, 1 << 20, 4 << 20] {
        let (osu, fresh) = (bandwidth(default, size, false), bandwidth(default, size, true));
        println!("{:>10} {:>17.2} GB/s {:>17.2} GB/s", size, osu, fresh);
    }
    if scan {
        println!("threshold scan, fresh data: forced eager vs forced rendezvous");
        println!("{:>8} {:>12} {:>12} {:>12} {:>12}", "size", "eager µs", "rdv µs", "eager GB/s", "rdv GB/s");
        for size in [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536] {
            let (eager, rdv) = (config(size), config(0));
            println!(
                "{:>8} {:>12.3} {:>12.3} {:>12.2} {:>12.2}",
                size,
                latency(eager, size, true),
                latency(rdv, size, true),
                bandwidth(eager, size, true),
                bandwidth(rdv, size, true)
            );
        }
    }
}
