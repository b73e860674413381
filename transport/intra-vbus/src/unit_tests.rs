//! Tests that look inside the ring (single thread, two endpoints).

use super::*;
use core::mem::size_of;

struct NoNotify;
impl Notify for NoNotify {
    fn notify(&self, _core: CoreId) {}
    fn wait(&self, _core: CoreId) {}
}

fn env(tag: i32) -> Envelope {
    Envelope { src_rank: 0, dst_rank: 1, tag, comm: 7, kind: 0 }
}

#[test]
fn sizes_of_shared_structures() {
    assert_eq!(size_of::<virtq::Desc>(), 16);
    assert_eq!(size_of::<Header>(), 40);
    assert_eq!(size_of::<virtq::HeaderLine>(), 64);
    assert_eq!(virtq::INLINE_BYTES, 20);
}

#[test]
fn index_wraps_past_u16_max() {
    let config = Config { queue_size: 4, eager_max: 64, ..Config::new(2) };
    let bus = Bus::new(config, NoNotify).unwrap();
    let mut a = bus.endpoint(0).unwrap();
    let mut b = bus.endpoint(1).unwrap();
    let total: u32 = 200_000;
    let (mut sent, mut received) = (0u32, 0u32);
    while received < total {
        // Fill the ring until back-pressure, then drain it.
        while sent < total {
            let bytes = sent.to_le_bytes();
            // SAFETY: eager (4 bytes ≤ eager_max): complete at once.
            match unsafe { a.try_isend(1, env(sent as i32), &bytes) } {
                Ok(h) => assert!(a.test(&h)),
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
            sent += 1;
        }
        while let Some(m) = b.poll() {
            assert_eq!(m.header().env.tag, received as i32);
            assert_eq!(m.payload(), &received.to_le_bytes());
            b.release(m);
            received += 1;
        }
    }
    assert_eq!(bus.ring(0, 1).avail_idx(), (total % 65_536) as u16);
}

#[test]
fn released_eager_descriptors_go_back_in_one_batch() {
    let bus = Bus::new(Config::new(2), NoNotify).unwrap();
    let (mut a, mut b) = (bus.endpoint(0).unwrap(), bus.endpoint(1).unwrap());
    for tag in 0..10 {
        a.send(1, env(tag), &[tag as u8; 8]).unwrap();
    }
    let ring = bus.ring(0, 1);
    for tag in 0..10 {
        let m = b.poll().expect("sent above");
        assert_eq!(m.header().env.tag, tag);
        b.release(m);
        let expected = if tag < 7 { 0 } else { 8 };
        assert_eq!(ring.used_idx(), expected, "eight go back together, after the eighth release");
    }
    assert!(b.poll().is_none());
    assert_eq!(ring.used_idx(), 8, "polling gives nothing back");
    b.send(0, env(99), &[]).unwrap();
    assert_eq!(ring.used_idx(), 10, "the next send gave the other two back");
    // A rendezvous descriptor goes back at its release: its sender waits for it.
    let big = vec![3u8; DEFAULT_EAGER_MAX + 1];
    // SAFETY: `big` outlives the handle, tested complete below before it drops.
    let h = unsafe { a.try_isend(1, env(9), &big) }.unwrap();
    let m = b.poll().unwrap();
    b.release(m);
    assert_eq!(ring.used_idx(), 11);
    assert!(a.test(&h));
}

#[test]
fn a_small_ring_is_never_held_whole() {
    // Two descriptors: the second release gives both back, so a sender that
    // filled the ring finds room again while the receiver only polls.
    let config = Config { queue_size: 2, ..Config::new(2) };
    let bus = Bus::new(config, NoNotify).unwrap();
    let (mut a, mut b) = (bus.endpoint(0).unwrap(), bus.endpoint(1).unwrap());
    for round in 0..3 {
        for tag in 0..2 {
            // SAFETY: eager, complete at once.
            let h = unsafe { a.try_isend(1, env(tag), &[1]) }.expect("room after the receiver's releases");
            assert!(h.is_complete());
        }
        // SAFETY: as above.
        assert_eq!(unsafe { a.try_isend(1, env(2), &[1]) }.unwrap_err(), SendError::WouldBlock, "round {round}");
        for _ in 0..2 {
            let m = b.poll().unwrap();
            b.release(m);
        }
        assert!(b.poll().is_none());
    }
}

#[test]
fn config_limits() {
    assert_eq!(Config::new(0).validate(), Err(ConfigError::Cores));
    assert_eq!(Config::new(65).validate(), Err(ConfigError::Cores));
    assert!(Config::new(64).validate().is_ok());
    assert_eq!(Config::new(64).memory_bytes(), 73_285_632);
    assert_eq!(Config::new(8).memory_bytes(), 7_705_600);
    for q in [0u16, 1, 3, 100, 32768] {
        assert_eq!(Config { queue_size: q, ..Config::new(2) }.validate(), Err(ConfigError::QueueSize));
    }
    assert!(Config { queue_size: 16384, ..Config::new(2) }.validate().is_ok());
}

#[test]
fn endpoint_taken_once() {
    let bus = Bus::new(Config::new(2), NoNotify).unwrap();
    let _a = bus.endpoint(0).unwrap();
    assert_eq!(bus.endpoint(0).unwrap_err(), EndpointError::Taken);
    assert_eq!(bus.endpoint(2).unwrap_err(), EndpointError::NoSuchCore);
}

#[test]
fn print_memory_table() {
    // Figures of the table in the crate docs and README.md.
    for (q, e) in [(64u16, 2048usize), (16, 1024)] {
        for cores in [2, 4, 8, 64] {
            let c = Config { queue_size: q, eager_max: e, ..Config::new(cores) };
            std::println!("q={q} eager={e} cores={cores} ring={} total={}", c.ring_bytes() + c.private_ring_bytes(), c.memory_bytes());
        }
    }
    assert_eq!(Config::new(2).ring_bytes(), 64 * 16 + 64 * 64 + 192 + 576 + 64 * 2048);
}
