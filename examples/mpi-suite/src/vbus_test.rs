//! intra-vbus in a VM, without the MPI layer: one thread per core, each with
//! its core's endpoint. Checks, each with a line `vbus: <check> ok`:
//! all pairs exchanging messages of mixed sizes (eager and rendezvous) with
//! checksums; MESSAGES small messages core 0 → core 1; an 8-byte ping-pong between
//! cores 0 and 1 beside the yardsticks of `intra_vbus::floor` (a cache line, the
//! answer in a second line, a bare ring; one-way ns, best batch); one BIG
//! MiB message.
//! Arguments: `-- [MESSAGES [BIG_MIB]]` (defaults 1000000 and 16).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use intra_vbus::floor::{BareRing, CacheLine};
use intra_vbus::{Bus, Config, Endpoint, Envelope, SendError, SendHandle};
use toro::{println, RtMachine};

toro::main!(main);

type Ep = Endpoint<'static, RtMachine>;

fn byte(src: usize, dst: usize, seq: usize, i: usize) -> u8 {
    (src * 31 + dst * 17 + seq * 7 + i * 13 + (i >> 8)) as u8
}

fn fill(src: usize, dst: usize, seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| byte(src, dst, seq, i)).collect()
}

const SIZES: [usize; 6] = [0, 1, 64, 2048, 2049, 40_000];

fn all_pairs(mut ep: Ep, rounds: usize) -> (Ep, u64) {
    let me = ep.core();
    let n = ep.bus().config().cores;
    let peers: Vec<usize> = (0..n).filter(|&p| p != me).collect();
    let mut next_send = vec![0usize; n];
    let mut next_recv = vec![0usize; n];
    let mut pending: Vec<(SendHandle, Vec<u8>)> = Vec::new();
    let mut checksum = 0u64;
    let total = rounds * peers.len();
    let (mut sent, mut received) = (0, 0);
    while sent < total || received < total || !pending.is_empty() {
        let mut progress = false;
        for &p in &peers {
            if next_send[p] < rounds {
                let seq = next_send[p];
                let data = fill(me, p, seq, SIZES[seq % SIZES.len()]);
                let env = Envelope { src_rank: me as u32, dst_rank: p as u32, tag: seq as i32, comm: 0, kind: 0 };
                // SAFETY: `data` is kept in `pending` until `test` says the send completed.
                match unsafe { ep.try_isend(p, env, &data) } {
                    Ok(h) => {
                        pending.push((h, data));
                        next_send[p] += 1;
                        sent += 1;
                        progress = true;
                    }
                    Err(SendError::WouldBlock) => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
        }
        while let Some(m) = ep.poll() {
            let src = m.src_core();
            let h = m.header();
            let seq = next_recv[src];
            assert_eq!((h.env.tag as usize, h.env.src_rank as usize, h.env.dst_rank as usize), (seq, src, me), "FIFO");
            assert_eq!(h.len as usize, SIZES[seq % SIZES.len()]);
            let mut buf = vec![0u8; m.len()];
            let len = ep.receive_into(m, &mut buf).unwrap_or_else(|_| panic!("buffer"));
            for (i, &b) in buf[..len].iter().enumerate() {
                assert_eq!(b, byte(src, me, seq, i), "payload from {src} seq {seq} byte {i}");
                checksum = checksum.wrapping_mul(31).wrapping_add(b as u64);
            }
            next_recv[src] += 1;
            received += 1;
            progress = true;
        }
        let before = pending.len();
        pending.retain(|(h, _)| !ep.test(h));
        progress |= pending.len() != before;
        if !progress {
            ep.wait_for_work();
        }
    }
    (ep, checksum)
}

/// Round trips per batch of the ping-pong figures.
const PING_BATCH: u64 = 1000;

/// One-way ns of an 8-byte message between cores 0 and 1, best of `batches`.
fn ping_pong_bus(e0: Ep, e1: Ep, batches: u64) -> ((Ep, Ep), u64) {
    let env = Envelope { src_rank: 0, dst_rank: 1, tag: 0, comm: 0, kind: 0 };
    let echo = toro::rt::spawn_on(1, move || {
        let mut e1 = e1;
        let mut buf = [0u8; 8];
        for _ in 0..batches * PING_BATCH {
            let m = e1.recv();
            e1.receive_into(m, &mut buf).unwrap_or_else(|_| panic!("8-byte buffer"));
            e1.send(0, env, &buf).expect("send");
        }
        e1
    });
    let ping = toro::rt::spawn_on(0, move || {
        let mut e0 = e0;
        let mut buf = [0u8; 8];
        let mut best = u64::MAX;
        for _ in 0..batches {
            let start = toro::rt::now_ns();
            for i in 0..PING_BATCH {
                e0.send(1, env, &i.to_le_bytes()).expect("send");
                let m = e0.recv();
                e0.receive_into(m, &mut buf).unwrap_or_else(|_| panic!("8-byte buffer"));
            }
            best = best.min(toro::rt::now_ns() - start);
        }
        (e0, best / (2 * PING_BATCH))
    });
    let (e0, ns) = ping.join();
    ((e0, echo.join()), ns)
}

/// One-way ns of a yardstick from `intra_vbus::floor` between cores 0 and 1,
/// best of `batches`.
fn ping_pong_floor<F: Send + Sync + 'static>(
    floor: F,
    answer: fn(&F, u64),
    ask: fn(&F, u64),
    batches: u64,
) -> u64 {
    let floor: &'static F = Box::leak(Box::new(floor));
    let rounds = batches * PING_BATCH;
    let echo = toro::rt::spawn_on(1, move || (0..rounds).for_each(|i| answer(floor, i)));
    let ping = toro::rt::spawn_on(0, move || {
        let mut best = u64::MAX;
        for b in 0..batches {
            let start = toro::rt::now_ns();
            (b * PING_BATCH..(b + 1) * PING_BATCH).for_each(|i| ask(floor, i));
            best = best.min(toro::rt::now_ns() - start);
        }
        best / (2 * PING_BATCH)
    });
    echo.join();
    ping.join()
}

fn main() -> i32 {
    let args = toro::rt::args();
    let messages: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let big_mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(16);
    let cores = toro::rt::core_count();
    let bus: &'static Bus<RtMachine> = Box::leak(Box::new(Bus::new(Config::new(cores), RtMachine).expect("bus")));
    println!("vbus: {cores} cores, {} KiB of rings", bus.config().memory_bytes() / 1024);

    // 1. All pairs at once, every size class, checksums.
    let rounds = 600;
    let start = toro::rt::now_ns();
    let workers: Vec<_> = (0..cores)
        .map(|c| {
            let ep = bus.endpoint(c).expect("endpoint");
            toro::rt::spawn_on(c, move || all_pairs(ep, rounds))
        })
        .collect();
    let mut endpoints: Vec<Ep> = Vec::new();
    let mut sums = Vec::new();
    for w in workers {
        let (ep, sum) = w.join();
        endpoints.push(ep);
        sums.push(sum);
    }
    println!(
        "vbus: all pairs ({} messages per ordered pair, 0 B .. 40 KB) checksums {:x?} in {} ms ok",
        rounds,
        sums,
        (toro::rt::now_ns() - start) / 1_000_000
    );
    if cores < 2 {
        return 0;
    }
    let mut eps = endpoints.into_iter();
    let (mut e0, mut e1) = (eps.next().unwrap(), eps.next().unwrap());
    let env = Envelope { src_rank: 0, dst_rank: 1, tag: 0, comm: 0, kind: 0 };

    // 2. Many small messages core 0 -> core 1, in order.
    let start = toro::rt::now_ns();
    let receiver = toro::rt::spawn_on(1, move || {
        let mut buf = [0u8; 8];
        for i in 0..messages as u64 {
            let m = e1.recv();
            let n = e1.receive_into(m, &mut buf).unwrap_or_else(|_| panic!("8-byte buffer"));
            assert_eq!((n, u64::from_le_bytes(buf)), (8, i), "message {i}");
        }
        e1
    });
    let sender = toro::rt::spawn_on(0, move || {
        for i in 0..messages as u64 {
            e0.send(1, env, &i.to_le_bytes()).expect("send");
        }
        e0
    });
    let (e0, e1) = (sender.join(), receiver.join());
    let ns = toro::rt::now_ns() - start;
    println!(
        "vbus: {messages} messages of 8 B core 0 -> core 1 in order, {} ms, {} ns per message ok",
        ns / 1_000_000,
        ns / messages.max(1) as u64
    );

    // 3. Ping-pong 8 B between cores 0 and 1: the bus's one-way latency in this VM, beside
    //    the floors it is measured against, best batch of 1,000 round trips.
    let ((e0_back, e1_back), bus_ns) = ping_pong_bus(e0, e1, 20);
    let line_ns = ping_pong_floor(CacheLine::one_line(), CacheLine::answer, CacheLine::ask, 20);
    let two_ns = ping_pong_floor(CacheLine::two_lines(), CacheLine::answer, CacheLine::ask, 20);
    let bare_ns = ping_pong_floor(BareRing::default(), BareRing::answer, BareRing::ask, 20);
    println!(
        "vbus: ping-pong 8 B one-way {bus_ns} ns, cache line one-way {line_ns} ns, \
         answer in a second line {two_ns} ns, bare ring {bare_ns} ns (best batch of 1000) ok"
    );
    let (mut e0, mut e1) = (e0_back, e1_back);

    // 4. One big message (rendezvous: one copy into the receiver's buffer).
    let len = big_mib << 20;
    let start = toro::rt::now_ns();
    let receiver = toro::rt::spawn_on(1, move || {
        let mut buf = vec![0u8; len];
        let m = e1.recv();
        assert_eq!(m.len(), len);
        e1.receive_into(m, &mut buf).unwrap_or_else(|_| panic!("big buffer"));
        buf.iter().enumerate().all(|(i, &b)| b == byte(0, 1, 99, i))
    });
    let sender = toro::rt::spawn_on(0, move || {
        let data = fill(0, 1, 99, len);
        e0.send(1, env, &data).expect("send");
    });
    sender.join();
    let ok = receiver.join();
    let ns = (toro::rt::now_ns() - start).max(1);
    println!("vbus: one {big_mib} MiB message, content {}, {} ms (fill and check included) {}", if ok { "intact" } else { "CORRUPT" }, ns / 1_000_000, if ok { "ok" } else { "FAIL" });
    if ok { 0 } else { 1 }
}
