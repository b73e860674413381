//! Two VMs, one rank each (`toro-mpirun -np 2 --vms 2 internet-pingpong.elf [ARGS]`):
//! rank 0 and rank 1 exchange messages through inter-net's `Transport` directly (no MPI
//! matching). Always: data checks 0 B .. 1 MiB both ways and a checked ping-pong.
//! Arguments:
//! - `bench [iters=N]`: osu-style latency (8 B, 1 KiB; N round trips, default 1000) and
//!   bandwidth (64 KiB, 1 MiB; 16 in flight), with VM exits (notifies) per message;
//! - `big=M`: one message of M MiB rank 0 → rank 1, checked;
//!   with `hold`: rank 1 takes its first chunk, then only keeps the connection alive
//!   (the transfer stays in flight; a test kills the VM);
//!   with `die`: rank 1's VM ends in the middle (rank 0 must end the job naming VM 1);
//! - `watch`: a thread printing the node's state every 3 s (debugging a stall);
//! - `halt`: a rank that waits spins 20 µs, then blocks on the network
//!   (`Shared::prepare_wait`, the NIC's receive interrupt routed to the cores, the
//!   runtime's `waiters::wait_until`) as MPI ranks do, instead of spinning; the bench
//!   then also counts halts, timer armings and IPIs per message.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use inter_net::vm::{self, IdentityHal, VmNet};
use inter_net::{NetConfig, NetEndpoint};
use mpi::transport::{Header, MessageKind, Transport};
use toro_rt::println;

toro_rt::main!(main);

static PHASE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static BEAT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

static WATCH: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// `halt`: waiting ranks block on the network after `SPIN_NS`.
static HALT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
const SPIN_NS: u64 = 20_000;
/// A blocked rank looks again after this long at the latest.
const WAIT_LIMIT_NS: u64 = 20_000_000;

/// Nothing to do since `idle_since` (now_ns): spin, or block on the network (`halt`).
fn idle(me: u32, idle_since: u64) {
    let now = toro_rt::now_ns();
    if !HALT.load(core::sync::atomic::Ordering::Relaxed) || now - idle_since < SPIN_NS {
        beat();
        return;
    }
    let net = net();
    if let Some(due_us) = net.prepare_wait(me) {
        toro_rt::waiters::wait_until(toro_rt::current_core(), due_us.saturating_mul(1000).min(now + WAIT_LIMIT_NS));
    }
    net.finish_wait(me);
}

/// The network's waker: each VM has one rank (on the core that runs it).
fn wake(_rank: u32) {
    toro_rt::waiters::notify(0);
}

fn beat() {
    BEAT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if WATCH.load(core::sync::atomic::Ordering::Relaxed) {
        toro_rt::yield_now();
    }
}

static NET: spin::Once<Arc<VmNet<IdentityHal>>> = spin::Once::new();

fn clock_us() -> u64 {
    toro_rt::now_ns() / 1000
}

fn fatal(message: &str) -> ! {
    println!("toro: inter-net: {}", message);
    toro_rt::exit(16)
}

fn net() -> Arc<VmNet<IdentityHal>> {
    NET.call_once(|| {
        let cmdline = toro_rt::cmdline();
        let mut config = NetConfig::from_keys(|key| cmdline.get(key)).unwrap_or_else(|e| fatal(&e));
        if let Some(ms) = toro_rt::env_var("NET_PEER_TIMEOUT_MS").and_then(|v| v.parse().ok()) {
            config.peer_timeout_ms = ms;
        }
        // Measurements (`-x NET_MTU=1500`): the IP MTU, the TCP buffer per connection
        // and the credit per rank pair, as the `netmtu=`, `netbuf=` and `netwindow=`
        // keys set them.
        if let Some(mtu) = toro_rt::env_var("NET_MTU").and_then(|v| v.parse::<usize>().ok()) {
            config.mtu = mtu.clamp(inter_net::node::MIN_MTU, inter_net::node::MAX_MTU);
        }
        if let Some(bytes) = toro_rt::env_var("NET_BUF").and_then(|v| v.parse::<usize>().ok()) {
            config.socket_buffer = bytes.clamp(4096, 1 << 30);
        }
        if let Some(on) = toro_rt::env_var("NET_CSUM").and_then(|v| v.parse::<u8>().ok()) {
            config.checksums = on != 0;
        }
        if let Some(bytes) = toro_rt::env_var("NET_WINDOW").and_then(|v| v.parse::<usize>().ok()) {
            config.window = bytes.max(4096);
        }
        use toro_abi::layout::{PCI_BAR_POOL, PCI_BAR_POOL_END, USER_MMIO_BASE, USER_MMIO_END};
        let pci = toro_rt::virtio::pci_ecam().map(|(ecam, last_bus)| vm::PciBus {
            ecam,
            last_bus,
            reach: (USER_MMIO_BASE, USER_MMIO_END),
            bar_pool: (PCI_BAR_POOL, PCI_BAR_POOL_END),
        });
        // SAFETY: the virtio-mmio window and the PCI BAR window are mapped for ring 3
        // (toro_abi::layout), the kernel mapped the ECAM it reports, and this app runs
        // no other virtio-net driver; called once per VM.
        match unsafe { vm::start::<IdentityHal>(config, pci, clock_us, fatal) } {
            Ok(net) => net,
            Err(error) => fatal(&alloc::format!("{:?}", error)),
        }
    })
    .clone()
}

fn header(me: u32, peer: u32, tag: i32, len: usize) -> Header {
    Header { source: me, dest: peer, tag, context: 1, len, kind: MessageKind::Data, cookie: 0 }
}

fn send(t: &mut Endpoint, h: Header, data: &[u8]) {
    let ticket = t.start_send(&h, data).unwrap_or_else(|e| fatal(&alloc::format!("send: {:?}", e)));
    let since = toro_rt::now_ns();
    while !t.send_complete(ticket) {
        idle(h.source, since);
    }
}


fn receive(t: &mut Endpoint, into: &mut Vec<u8>) -> Header {
    let since = toro_rt::now_ns();
    loop {
        // The peer may be busy for a while (checking 64 MiB under TCG takes seconds).
        if toro_rt::now_ns() - since > 30_000_000_000 {
            let net = net();
            let node = net.node.lock();
            let device = node.device();
            fatal(&alloc::format!("nothing to receive for 30 s: {:?} {:?} rx {} tx {}\n{}", vm::exits(), node.stats(), device.frames_received, device.frames_sent, node.describe()));
        }
        idle(my_rank(), since);
        if let Some(h) = t.peek() {
            into.resize(h.len, 0);
            // `receive_payload` without its endless wait: the same reads and polls, watched.
            let net = net();
            let mut since = since;
            let mut last_arrived = 0;
            loop {
                let done = {
                    let mut node = net.node.lock();
                    match node.read(h.dest, &mut into[..]) {
                        Ok(false) => {
                            node.poll();
                            node.read(h.dest, &mut into[..])
                        }
                        other => other,
                    }
                };
                match done {
                    Ok(true) => return h,
                    Ok(false) => {}
                    Err(message) => fatal(&message),
                }
                // Stuck means no frame arrived for 5 s (a 64 MiB message takes longer under TCG).
                let arrived = net.node.lock().device().frames_received;
                if arrived != last_arrived {
                    last_arrived = arrived;
                    since = toro_rt::now_ns();
                }
                idle(h.dest, since);
                if toro_rt::now_ns() - since > 5_000_000_000 {
                    let node = net.node.lock();
                    let device = node.device();
                    fatal(&alloc::format!("receive of {} B stuck 5 s: {:?} {:?} rx {} tx {}\n{}", h.len, vm::exits(), node.stats(), device.frames_received, device.frames_sent, node.describe()));
                }
            }
        }
    }
}

/// This VM's rank (one per VM here).
fn my_rank() -> u32 {
    toro_rt::rank().unwrap_or(0)
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13 ^ seed) as u8).collect()
}

fn main() -> i32 {
    let me = toro_rt::rank().unwrap_or(0);
    if me > 1 {
        return 0;
    }
    let peer = 1 - me;
    let args = toro_rt::args();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| args.iter().find_map(|a| a.strip_prefix(name).and_then(|v| v.strip_prefix('='))).and_then(|v| v.parse::<usize>().ok());
    let (bench, die, hold) = (flag("bench"), flag("die"), flag("hold"));
    if flag("halt") {
        let net = net();
        net.set_waker(wake);
        let routed = vm::route_receive_interrupt(
            |address| toro_rt::virtio::route_interrupt(address, None),
            || toro_rt::virtio::msi_message(None),
        );
        if !routed {
            fatal("halt: the NIC's interrupt could not be routed");
        }
        HALT.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    let big = value("big").unwrap_or(0);
    let iterations = value("iters").unwrap_or(1000);
    let net = net();
    if flag("watch") {
        let net = net.clone();
        WATCH.store(true, core::sync::atomic::Ordering::Relaxed);
        toro_rt::spawn_on(0, move || loop {
            let until = toro_rt::now_ns() + 3_000_000_000;
            while toro_rt::now_ns() < until {
                toro_rt::yield_now();
            }
            let beat = BEAT.load(core::sync::atomic::Ordering::Relaxed);
            let phase = PHASE.load(core::sync::atomic::Ordering::Relaxed);
            match net.node.try_lock() {
                Some(node) => println!("watch: phase {} beat {} {:?} {:?} rx {} tx {}\n{}", phase, beat, vm::exits(), node.stats(), node.device().frames_received, node.device().frames_sent, node.describe()),
                None => println!("watch: phase {} beat {} {:?} node locked", phase, beat, vm::exits()),
            }
        });
    }
    let mut t = NetEndpoint::new(net.clone(), me);
    let mut buffer = Vec::new();
    // Warm-up and connection set-up: one round trip.
    if me == 0 {
        send(&mut t, header(me, peer, 0, 8), &[7; 8]);
        receive(&mut t, &mut buffer);
    } else {
        receive(&mut t, &mut buffer);
        send(&mut t, header(me, peer, 0, 8), &[7; 8]);
    }
    // Data checks, sizes 0 .. 1 MiB both ways.
    for (i, &len) in [0usize, 1, 100, 1460, 1461, 65_536, 200_001, 1 << 20].iter().enumerate() {
        let mine = pattern(me * 1000 + i as u32, len);
        let (first, second) = if me == 0 { (true, false) } else { (false, true) };
        for turn in [first, second] {
            if turn {
                send(&mut t, header(me, peer, i as i32, len), &mine);
            } else {
                let h = receive(&mut t, &mut buffer);
                if h.tag != i as i32 || buffer != pattern(peer * 1000 + i as u32, len) {
                    fatal(&alloc::format!("data check failed at size {} (tag {})", len, h.tag));
                }
            }
        }
    }
    println!("data checks passed (0 B .. 1 MiB both ways) at {} ms", toro_rt::now_ns() / 1_000_000);
    // Ping-pong with every message checked (a new pattern each time).
    for &len in &[8usize, 1024] {
        for k in 0..50u32 {
            let seed = 5000 + k * 7 + len as u32;
            if me == 0 {
                send(&mut t, header(me, peer, 4, len), &pattern(seed, len));
                let h = receive(&mut t, &mut buffer);
                if h.tag != 5 || buffer != pattern(seed + 1, len) {
                    fatal(&alloc::format!("ping-pong check failed at {} B, round {}", len, k));
                }
            } else {
                let h = receive(&mut t, &mut buffer);
                if h.tag != 4 || buffer != pattern(seed, len) {
                    fatal(&alloc::format!("ping-pong check failed at {} B, round {}", len, k));
                }
                send(&mut t, header(me, peer, 5, len), &pattern(seed + 1, len));
            }
        }
    }
    println!("ping-pong checks passed (8 B and 1 KiB, 50 round trips each)");
    let mut report = String::new();
    if bench {
        bench_run(&mut t, me, peer, iterations, &mut report);
    }
    if big > 0 {
        big_message(&mut t, &net, me, peer, big << 20, hold, die, &mut report);
    }
    let exits = vm::exits();
    let stats = net.node.lock().stats();
    let (frames_in, frames_out) = {
        let node = net.node.lock();
        (node.device().frames_received, node.device().frames_sent)
    };
    println!("{}register accesses: {} notifies, {} other; {:?}; Ethernet frames in {} out {}", report, exits.notifies, exits.other, stats, frames_in, frames_out);
    // Before this VM ends: everything sent must be acknowledged by the peer (a frame
    // lost now would never be retransmitted), then a little more for our last ACKs.
    let until = toro_rt::now_ns() + 10_000_000_000;
    while !net.node.lock().flushed() && toro_rt::now_ns() < until {
        net.poll();
    }
    let until = toro_rt::now_ns() + 50_000_000;
    while toro_rt::now_ns() < until {
        net.poll();
    }
    net.close(100_000);
    0
}

type Endpoint = NetEndpoint<vm::VmNic<IdentityHal>>;

/// osu-style latency (8 B, 1 KiB) and bandwidth (64 KiB, 1 MiB), with VM exits per message.
fn bench_run(t: &mut Endpoint, me: u32, peer: u32, iterations: usize, report: &mut String) {
    let mut buffer = Vec::new();
    // Latency: ping-pong, half the round trip (osu_latency), after 10% warm-up.
    for &len in &[8usize, 1024] {
        let data = vec![1u8; len];
        let warmup = iterations / 10;
        let mut exits_before = vm::exits().notifies;
        let mut traps_before = toro_rt::trap_counts();
        let mut start = toro_rt::now_ns();
        for i in 0..warmup + iterations {
            if i == warmup {
                exits_before = vm::exits().notifies;
                traps_before = toro_rt::trap_counts();
                start = toro_rt::now_ns();
            }
            if me == 0 {
                send(t, header(me, peer, 1, len), &data);
                receive(t, &mut buffer);
            } else {
                receive(t, &mut buffer);
                send(t, header(me, peer, 1, len), &data);
            }
        }
        let elapsed = toro_rt::now_ns() - start;
        let exits = vm::exits().notifies - exits_before;
        *report += &alloc::format!(
            "bench latency {} B: {:.1} us one-way, {:.2} VM exits (notifies) per message sent{}\n",
            len,
            elapsed as f64 / 1000.0 / (2 * iterations) as f64,
            exits as f64 / iterations as f64,
            traps_per(traps_before, iterations)
        );
    }
    // Bandwidth: a window of 16 messages, then a 4-byte reply (osu_bw).
    for &len in &[65_536usize, 1 << 20] {
        let data = vec![2u8; len];
        let rounds = if len > 100_000 { 8 } else { 32 };
        let mut exits_before = vm::exits().notifies;
        let mut traps_before = toro_rt::trap_counts();
        let mut start = toro_rt::now_ns();
        for round in 0..rounds + 2 {
            if round == 2 {
                exits_before = vm::exits().notifies;
                traps_before = toro_rt::trap_counts();
                start = toro_rt::now_ns();
            }
            if me == 0 {
                let tickets: Vec<_> = (0..16).map(|_| t.start_send(&header(me, peer, 2, len), &data).unwrap_or_else(|_| fatal("send"))).collect();
                for ticket in tickets {
                    let since = toro_rt::now_ns();
                    while !t.send_complete(ticket) {
                        idle(me, since);
                    }
                }
                receive(t, &mut buffer);
            } else {
                for _ in 0..16 {
                    receive(t, &mut buffer);
                }
                send(t, header(me, peer, 3, 4), &[0; 4]);
            }
        }
        let elapsed = toro_rt::now_ns() - start;
        let exits = vm::exits().notifies - exits_before;
        let bytes = (len * 16 * rounds) as f64;
        *report += &alloc::format!(
            "bench bandwidth {} B: {:.1} MB/s, {:.2} VM exits (notifies) per message{}\n",
            len,
            bytes / (elapsed as f64 / 1e9) / 1e6,
            exits as f64 / (16 * rounds) as f64,
            traps_per(traps_before, 16 * rounds)
        );
    }
}

/// With `halt`: halts, timer armings and IPIs since `before`, per message.
fn traps_per(before: toro_rt::TrapCounts, messages: usize) -> String {
    if !HALT.load(core::sync::atomic::Ordering::Relaxed) {
        return String::new();
    }
    let now = toro_rt::trap_counts();
    let per = |n: u64| n as f64 / messages as f64;
    alloc::format!(
        "; per message: {:.2} halts ({:.2} timer armings), {:.2} IPIs",
        per(now.timed_halts + now.halts - before.timed_halts - before.halts),
        per(now.timer_arms - before.timer_arms),
        per(now.ipis - before.ipis)
    )
}

/// One large message rank 0 → rank 1, checked, then an empty reply. `hold`: rank 1
/// takes the first chunk, then keeps its connection alive without reading (the
/// transfer stays in flight until the test kills this VM). `die`: rank 1 takes part
/// of it, then its VM ends (rank 0 must end the job naming VM 1).
#[allow(clippy::too_many_arguments)]
fn big_message(t: &mut Endpoint, net: &Arc<VmNet<IdentityHal>>, me: u32, peer: u32, len: usize, hold: bool, die: bool, report: &mut String) {
    PHASE.store(64, core::sync::atomic::Ordering::Relaxed);
    let mut buffer = Vec::new();
    if me == 0 {
        let data = pattern(64, len);
        let start = toro_rt::now_ns();
        send(t, header(me, peer, 64, len), &data);
        let h = receive(t, &mut buffer);
        if h.tag != 65 {
            fatal("big message: no acknowledgement");
        }
        *report += &alloc::format!("big message of {} MiB: {:.1} ms, checked\n", len >> 20, (toro_rt::now_ns() - start) as f64 / 1e6);
        if die || hold {
            println!("unexpected: the peer neither died nor held");
        }
        return;
    }
    while t.peek().is_none() {}
    println!("big message arriving ({} MiB)", len >> 20);
    if hold {
        loop {
            net.poll();
        }
    }
    if die {
        for _ in 0..2000 {
            net.poll();
        }
        println!("rank 1 exits in the middle of the big message");
        // As the glue ends a VM: close the connections (the peers learn at once).
        net.close(100_000);
        toro_rt::exit(0);
    }
    let h = receive(t, &mut buffer);
    if h.len != len || buffer != pattern(64, len) {
        fatal("big message corrupted");
    }
    send(t, header(me, peer, 65, 0), &[]);
}
