//! Two VMs, one rank each (`toro-mpirun -np 2 --vms 2 internet-pingpong.elf`): rank 0
//! and rank 1 exchange messages through inter-net's `Transport` directly (no MPI
//! matching): data checks, osu-style latency and bandwidth, VM exits per message, a
//! 64 MiB message. Argument `die`: rank 1 exits in the middle of the 64 MiB message
//! (rank 0 must end the job naming VM 1).
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
        // SAFETY: the virtio-mmio window is mapped for ring 3 (toro_abi::layout) and
        // this app runs no other virtio-net driver; called once per VM.
        match unsafe { vm::start::<IdentityHal>(config, clock_us, fatal) } {
            Ok(net) => net,
            Err(error) => fatal(&alloc::format!("{:?}", error)),
        }
    })
    .clone()
}

fn header(me: u32, peer: u32, tag: i32, len: usize) -> Header {
    Header { source: me, dest: peer, tag, context: 1, len, kind: MessageKind::Data, cookie: 0 }
}

fn send(t: &mut NetEndpoint<vm::VirtioNet<IdentityHal, vm::MmioTransport<'static>>>, h: Header, data: &[u8]) {
    let ticket = t.start_send(&h, data).unwrap_or_else(|e| fatal(&alloc::format!("send: {:?}", e)));
    while !t.send_complete(ticket) {
        beat();
    }
}


fn receive(t: &mut NetEndpoint<vm::VirtioNet<IdentityHal, vm::MmioTransport<'static>>>, into: &mut Vec<u8>) -> Header {
    let since = toro_rt::now_ns();
    loop {
        // The peer may be busy for a while (checking 64 MiB under TCG takes seconds).
        if toro_rt::now_ns() - since > 30_000_000_000 {
            let net = net();
            let node = net.node.lock();
            let device = node.device();
            fatal(&alloc::format!("nothing to receive for 30 s: {:?} {:?} rx {} tx {}\n{}", vm::exits(), node.stats(), device.frames_received, device.frames_sent, node.describe()));
        }
        beat();
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
                beat();
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
                if toro_rt::now_ns() - since > 5_000_000_000 {
                    let node = net.node.lock();
                    let device = node.device();
                    fatal(&alloc::format!("receive of {} B stuck 5 s: {:?} {:?} rx {} tx {}\n{}", h.len, vm::exits(), node.stats(), device.frames_received, device.frames_sent, node.describe()));
                }
            }
        }
    }
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
    let die = toro_rt::args().iter().any(|a| a == "die");
    let net = net();
    if toro_rt::args().iter().any(|a| a == "watch") {
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
    // Latency: ping-pong, half the round trip.
    let mut report = String::new();
    for &len in &[8usize, 1024] {
        let iterations = 200;
        let data = vec![1u8; len];
        let exits_before = vm::exits().notifies;
        let start = toro_rt::now_ns();
        for _ in 0..iterations {
            if me == 0 {
                send(&mut t, header(me, peer, 1, len), &data);
                receive(&mut t, &mut buffer);
            } else {
                receive(&mut t, &mut buffer);
                send(&mut t, header(me, peer, 1, len), &data);
            }
        }
        let elapsed = toro_rt::now_ns() - start;
        let exits = vm::exits().notifies - exits_before;
        report += &alloc::format!(
            "latency {} B: {:.1} us one-way, {:.2} notifies per message sent\n",
            len,
            elapsed as f64 / 1000.0 / (2 * iterations) as f64,
            exits as f64 / iterations as f64
        );
    }
    // Bandwidth: a window of 16 messages, then a 4-byte ack (osu_bw style).
    for &len in &[65_536usize, 1 << 20] {
        let data = vec![2u8; len];
        let rounds = if len > 100_000 { 8 } else { 32 };
        let exits_before = vm::exits().notifies;
        let start = toro_rt::now_ns();
        for _ in 0..rounds {
            if me == 0 {
                let tickets: Vec<_> = (0..16).map(|_| t.start_send(&header(me, peer, 2, len), &data).unwrap_or_else(|_| fatal("send"))).collect();
                for ticket in tickets {
                    let since = toro_rt::now_ns();
                    while !t.send_complete(ticket) {
                        beat();
                        if toro_rt::now_ns() - since > 5_000_000_000 {
                            let node = net.node.lock();
                            fatal(&alloc::format!("send stuck 5 s: {:?} {:?} rx {} tx {}\n{}", vm::exits(), node.stats(), node.device().frames_received, node.device().frames_sent, node.describe()));
                        }
                    }
                }
                receive(&mut t, &mut buffer);
            } else {
                for _ in 0..16 {
                    receive(&mut t, &mut buffer);
                }
                send(&mut t, header(me, peer, 3, 4), &[0; 4]);
            }
        }
        let elapsed = toro_rt::now_ns() - start;
        let exits = vm::exits().notifies - exits_before;
        let bytes = (len * 16 * rounds) as f64;
        report += &alloc::format!(
            "bandwidth {} B: {:.1} MB/s, {:.2} notifies per message\n",
            len,
            bytes / (elapsed as f64 / 1e9) / 1e6,
            exits as f64 / (16 * rounds) as f64
        );
    }
    // 64 MiB, checked.
    PHASE.store(64, core::sync::atomic::Ordering::Relaxed);
    let len = 64 << 20;
    if me == 0 {
        let data = pattern(64, len);
        let start = toro_rt::now_ns();
        send(&mut t, header(me, peer, 64, len), &data);
        let h = receive(&mut t, &mut buffer);
        if h.tag != 65 {
            fatal("64 MiB: no acknowledgement");
        }
        report += &alloc::format!("64 MiB message: {:.1} ms, checked\n", (toro_rt::now_ns() - start) as f64 / 1e6);
        if die {
            println!("unexpected: peer did not die");
        }
    } else {
        if die {
            // Take part of the message, then the VM ends.
            while t.peek().is_none() {}
            for _ in 0..2000 {
                net.poll();
            }
            println!("rank 1 exits in the middle of the 64 MiB message");
            toro_rt::exit(0);
        }
        let h = receive(&mut t, &mut buffer);
        if h.len != len || buffer != pattern(64, len) {
            fatal("64 MiB message corrupted");
        }
        send(&mut t, header(me, peer, 65, 0), &[]);
    }
    let exits = vm::exits();
    let stats = net.node.lock().stats();
    let (frames_in, frames_out) = {
        let node = net.node.lock();
        (node.device().frames_received, node.device().frames_sent)
    };
    println!("{}register accesses: {} notifies, {} other; {:?}; Ethernet frames in {} out {}", report, exits.notifies, exits.other, stats, frames_in, frames_out);
    // Let the last frames (the peer's acks) go out before this VM ends.
    let until = toro_rt::now_ns() + 200_000_000;
    while toro_rt::now_ns() < until {
        net.poll();
    }
    0
}
