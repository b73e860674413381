//! Host tests with std threads as cores. Every test is bounded in time: waits
//! use timeouts and give up at `common::TEST_DEADLINE`.
#![cfg(not(loom))]

mod common;

use std::time::{Duration, Instant};

use common::*;
use intra_vbus::{Bus, Config, Envelope, Protocol, SendError};

/// Small rings and a small eager limit, so tests cross every boundary fast.
fn small(cores: usize) -> Config {
    Config { queue_size: 8, eager_max: 256, spin_polls: 200, ..Config::new(cores) }
}

#[test]
fn fifo_per_pair_both_directions() {
    let config = small(2);
    let t = config.eager_max;
    let sizes = [0, 1, 8, t - 1, t, t + 1, 3 * t, 5000];
    let stats = run_cores(config, |ep| {
        exchange(
            ep,
            &Traffic {
                count: &|s, d| if s == d { 0 } else { 20_000 },
                len: &|_, _, seq| sizes[seq as usize % sizes.len()],
            },
        )
    });
    assert_eq!(stats.timeouts, 0, "lost wake-up");
}

#[test]
fn index_wraps_past_65535_between_threads() {
    // 70,000 messages per direction: both u16 indices of both rings wrap.
    let config = Config { queue_size: 4, ..small(2) };
    let stats = run_cores(config, |ep| {
        exchange(
            ep,
            &Traffic {
                count: &|s, d| if s == d { 0 } else { 70_000 },
                len: &|_, _, seq| (seq % 16) as usize,
            },
        )
    });
    assert_eq!(stats.timeouts, 0, "lost wake-up");
}

#[test]
fn all_pairs_at_once_with_checksums() {
    for cores in [4, 8] {
        let config = small(cores);
        let stats = run_cores(config, |ep| {
            exchange(
                ep,
                &Traffic {
                    // Including each core to itself (the local queue).
                    count: &|_, _| 300,
                    len: &|s, d, seq| (Rng((s * 64 + d) as u64 ^ seq << 12).below(1200)) as usize,
                },
            )
        });
        assert_eq!(stats.timeouts, 0, "lost wake-up with {cores} cores");
    }
}

#[test]
fn random_sizes() {
    let config = Config { queue_size: 16, eager_max: 4096, ..small(2) };
    let stats = run_cores(config, |ep| {
        exchange(
            ep,
            &Traffic {
                count: &|s, d| if s == d { 0 } else { 2_000 },
                len: &|s, d, seq| {
                    let mut r = Rng((s * 64 + d) as u64 ^ seq << 20);
                    match r.below(100) {
                        0 => r.below(1 << 20) as usize,    // up to 1 MiB
                        1..=20 => r.below(64 << 10) as usize, // up to 64 KiB
                        _ => r.below(8192) as usize,        // around the threshold
                    }
                },
            },
        )
    });
    assert_eq!(stats.timeouts, 0, "lost wake-up");
}

#[test]
fn sizes_around_threshold_and_64_mib() {
    let config = Config { eager_max: 4096, ..small(2) };
    let t = config.eager_max;
    let sizes = [0, 1, t - 1, t, t + 1, 64 << 20];
    run_cores(config, |ep| {
        if ep.core() == 0 {
            for (seq, &len) in sizes.iter().enumerate() {
                let data = message(0, 1, seq as u64, len);
                ep.send(1, env(0, 1, seq as u64), &data).unwrap();
            }
        } else {
            let mut dst = vec![0u8; 64 << 20];
            for (seq, &len) in sizes.iter().enumerate() {
                let m = ep.recv();
                let h = m.header();
                assert_eq!(h.env, env(0, 1, seq as u64));
                assert_eq!(h.len, len as u64);
                let expected = if len <= t { Protocol::Eager } else { Protocol::Rendezvous };
                assert_eq!(h.protocol, expected, "protocol for {len} bytes");
                let n = ep.receive_into(m, &mut dst).unwrap();
                assert_eq!(n, len);
                assert!(dst[..len] == message(0, 1, seq as u64, len)[..], "payload of {len} bytes");
            }
        }
    });
}

#[test]
fn full_ring_is_back_pressure_never_loss() {
    let config = Config { queue_size: 4, eager_max: 16, ..Config::new(2) };
    let bus = Bus::new(config, Quiet).unwrap();
    let mut a = bus.endpoint(0).unwrap();
    let mut b = bus.endpoint(1).unwrap();
    let big = message(0, 1, 99, 100); // rendezvous
    // SAFETY: `big` outlives every handle and is never written.
    let h_big = unsafe { a.try_isend(1, env(0, 1, 0), &big) }.unwrap();
    for seq in 1..4 {
        // SAFETY: eager, complete at once.
        let h = unsafe { a.try_isend(1, env(0, 1, seq), &[seq as u8]) }.unwrap();
        assert!(a.test(&h));
    }
    for _ in 0..3 {
        // SAFETY: eager.
        let r = unsafe { a.try_isend(1, env(0, 1, 4), &[4]) };
        assert_eq!(r.unwrap_err(), SendError::WouldBlock);
    }
    assert!(!a.test(&h_big));
    // The receiver takes one message; the ring is still full until it is released.
    let m0 = b.poll().unwrap();
    assert_eq!(m0.header().protocol, Protocol::Rendezvous);
    // SAFETY: eager.
    assert_eq!(unsafe { a.try_isend(1, env(0, 1, 4), &[4]) }.unwrap_err(), SendError::WouldBlock);
    assert_eq!(m0.payload(), &big[..]);
    b.release(m0);
    assert!(a.test(&h_big));
    // SAFETY: eager.
    let h = unsafe { a.try_isend(1, env(0, 1, 4), &[4]) }.unwrap();
    assert!(a.test(&h));
    for seq in 1..5u64 {
        let m = b.poll().unwrap();
        assert_eq!(m.header().env.tag, seq as i32);
        assert_eq!(m.payload(), &[seq as u8]);
        b.release(m);
    }
    assert!(b.poll().is_none());
}

#[test]
fn released_eager_descriptors_go_back_at_a_send_wait_or_drop() {
    let config = Config { queue_size: 4, eager_max: 16, ..Config::new(3) };
    let bus = Bus::new(config, Quiet).unwrap();
    let (mut a, mut b, mut c) = (bus.endpoint(0).unwrap(), bus.endpoint(1).unwrap(), bus.endpoint(2).unwrap());
    // Eager sends to core 1: true if the ring took it.
    let try_send = |a: &mut intra_vbus::Endpoint<'_, Quiet>, tag: u64| {
        // SAFETY: eager (1 byte), complete at once.
        match unsafe { a.try_isend(1, env(0, 1, tag), &[tag as u8]) } {
            Ok(handle) => handle.is_complete(),
            Err(e) => {
                assert_eq!(e, SendError::WouldBlock);
                false
            }
        }
    };
    assert!((0..4).all(|tag| try_send(&mut a, tag)));
    assert!(!try_send(&mut a, 9), "the ring holds 4");
    let take = |b: &mut intra_vbus::Endpoint<'_, Quiet>, tag: i32| {
        let m = b.poll().unwrap();
        assert_eq!((m.header().env.tag, m.payload()), (tag, &[tag as u8][..]));
        b.release(m);
    };
    // Polling gives nothing back (a receiver draining a stream gives back
    // in batches); each other way a receiver carries on does:
    take(&mut b, 0);
    assert!(b.poll_from(2).is_none());
    assert!(!try_send(&mut a, 10), "the ring is still full");
    // waiting for work,
    b.wait_for_work();
    assert!(try_send(&mut a, 10));
    // its next send, to anyone,
    take(&mut b, 1);
    b.send(2, env(1, 2, 0), b"x").unwrap();
    let to_c = c.recv();
    c.release(to_c);
    assert!(try_send(&mut a, 11));
    // announcing a wait,
    take(&mut b, 2);
    if b.prepare_wait() {
        b.finish_wait();
    }
    assert!(try_send(&mut a, 12));
    // and dropping the endpoint.
    take(&mut b, 3);
    drop(b);
    assert!(try_send(&mut a, 13));
}

#[test]
fn peek_leaves_queued_and_held_messages_release_out_of_order() {
    let config = Config { queue_size: 4, eager_max: 16, ..Config::new(2) };
    let bus = Bus::new(config, Quiet).unwrap();
    let mut a = bus.endpoint(0).unwrap();
    let mut b = bus.endpoint(1).unwrap();
    let big = message(0, 1, 1, 1000);
    // SAFETY: `big` outlives the handle and is never written.
    let h1 = unsafe { a.try_isend(1, env(0, 1, 1), &big) }.unwrap();
    a.send(1, env(0, 1, 2), b"second").unwrap();
    // Peek does not consume.
    assert_eq!(b.peek_from(1), None);
    assert_eq!(b.peek_from(0).unwrap().env.tag, 1);
    assert_eq!(b.peek_from(0).unwrap().env.tag, 1);
    // The MPI layer keeps the first (unmatched) as an unexpected message
    // without copying, and receives the second.
    let held = b.poll_from(0).unwrap();
    let second = b.poll_from(0).unwrap();
    let mut small_buf = [0u8; 3];
    let second = b.receive_into(second, &mut small_buf).unwrap_err(); // never truncated
    let mut buf = [0u8; 6];
    assert_eq!(b.receive_into(second, &mut buf).unwrap(), 6);
    assert_eq!(&buf, b"second");
    assert!(!a.test(&h1), "rendezvous completes only when released");
    let mut dst = vec![0; 1000];
    assert_eq!(b.receive_into(held, &mut dst).unwrap(), 1000);
    assert_eq!(dst, big);
    assert!(a.test(&h1));
}

#[test]
fn ranks_on_the_same_core_use_the_local_queue() {
    let config = small(2);
    let stats = run_cores(config, |ep| {
        let me = ep.core();
        // Rounds of 50, all held before any is released (last first), sizes
        // changing from round to round and one beyond what a reused local
        // message keeps: released messages are reused by the next sends.
        let len = |round: u64, seq: u64| match seq % 25 {
            24 => 20_000,
            _ => ((seq + round * 13) as usize * 97) % 2000,
        };
        for round in 0..3u64 {
            for seq in 0..50u64 {
                let data = message(me, me, seq + round, len(round, seq));
                ep.send(me, env(me, me, seq), &data).unwrap();
            }
            let mut held = Vec::new();
            for seq in 0..50u64 {
                let m = ep.recv();
                assert_eq!(m.src_core(), me);
                assert_eq!(m.header(), intra_vbus::Header {
                    env: env(me, me, seq),
                    len: len(round, seq) as u64,
                    protocol: m.header().protocol,
                });
                assert_eq!(m.payload(), &message(me, me, seq + round, m.len())[..]);
                held.push(m);
            }
            while let Some(m) = held.pop() {
                ep.release(m);
            }
        }
    });
    assert_eq!(stats.notifies, 0, "no other core involved");
}

#[test]
fn slow_receiver() {
    let config = Config { queue_size: 4, ..small(2) };
    let t = config.eager_max;
    let stats = run_cores(config, |ep| {
        if ep.core() == 0 {
            for seq in 0..400u64 {
                let len = [3, t, t + 1, 2000][seq as usize % 4];
                ep.send(1, env(0, 1, seq), &message(0, 1, seq, len)).unwrap();
            }
        } else {
            for seq in 0..400u64 {
                if seq % 10 == 0 {
                    std::thread::sleep(Duration::from_micros(500));
                }
                let m = ep.recv();
                assert_eq!(m.header().env, env(0, 1, seq));
                assert_eq!(m.payload(), &message(0, 1, seq, m.len())[..]);
                ep.release(m);
            }
        }
    });
    assert!(stats.notifies > 0, "the sender should have slept on a full ring");
    assert_eq!(stats.timeouts, 0, "lost wake-up");
}

#[test]
fn sleeping_receiver_is_woken_every_time() {
    // No spinning at all: every empty poll announces, re-checks and sleeps.
    let config = Config { spin_polls: 0, ..small(2) };
    let rounds = 2_000u64;
    let stats = run_cores(config, |ep| {
        if ep.core() == 0 {
            let mut rng = Rng(7);
            for seq in 0..rounds {
                // Vary the race between publish and the receiver's announce.
                match rng.below(4) {
                    0 => std::thread::sleep(Duration::from_micros(rng.below(200))),
                    1 => (0..rng.below(2000)).for_each(|_| std::hint::spin_loop()),
                    _ => {}
                }
                ep.send(1, env(0, 1, seq), &seq.to_le_bytes()).unwrap();
            }
        } else {
            for seq in 0..rounds {
                let m = ep.recv();
                assert_eq!(m.payload(), &seq.to_le_bytes());
                ep.release(m);
            }
        }
    });
    assert!(stats.notifies > 0);
    assert_eq!(stats.timeouts, 0, "lost wake-up");
}

#[test]
fn polling_receiver_costs_the_sender_nothing() {
    let config = Config { queue_size: 16, ..small(2) };
    let stats = run_cores(config, |ep| {
        let deadline = Instant::now() + TEST_DEADLINE;
        let count = 20_000u64;
        if ep.core() == 0 {
            let mut seq = 0;
            while seq < count {
                // SAFETY: eager (8 bytes ≤ eager_max), complete at once.
                match unsafe { ep.try_isend(1, env(0, 1, seq), &seq.to_le_bytes()) } {
                    Ok(_) => seq += 1,
                    Err(SendError::WouldBlock) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
                assert!(Instant::now() < deadline);
            }
        } else {
            let mut seq = 0;
            while seq < count {
                match ep.poll() {
                    Some(m) => {
                        assert_eq!(m.payload(), &seq.to_le_bytes());
                        ep.release(m);
                        seq += 1;
                    }
                    None => std::thread::yield_now(),
                }
                assert!(Instant::now() < deadline);
            }
        }
    });
    assert_eq!(stats.notifies, 0);
}

#[test]
fn envelope_fields_travel_unchanged() {
    let config = small(2);
    run_cores(config, |ep| {
        let e = Envelope { src_rank: 123_456, dst_rank: 7, tag: -5, comm: u64::MAX - 1, kind: 0xfe };
        if ep.core() == 0 {
            ep.send(1, e, &[]).unwrap();
        } else {
            let m = ep.recv();
            assert_eq!(m.header().env, e);
            assert!(m.is_empty());
            ep.release(m);
        }
    });
}
