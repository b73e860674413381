//! Std threads as cores: a `Notify` built on park/unpark, a bounded-time
//! harness, deterministic message contents and a progress loop that sends
//! and receives at once (as the MPI layer will).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use intra_vbus::{Bus, Config, CoreId, Endpoint, Envelope, Notify, SendError, SendHandle};

/// Every test gives up (panics) after this long instead of hanging.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// `Notify` for std threads: one registered thread per core.
pub struct ThreadNotify {
    threads: Vec<Mutex<Option<Thread>>>,
    /// Calls to `notify`.
    pub notifies: AtomicU64,
    /// Waits that ended by timeout rather than a wake-up: with a timeout far
    /// above any real pause, each one is a lost wake-up.
    pub timeouts: AtomicU64,
    park_timeout: Duration,
    deadline: Instant,
}

impl ThreadNotify {
    pub fn new(cores: usize, park_timeout: Duration) -> Self {
        ThreadNotify {
            threads: (0..cores).map(|_| Mutex::new(None)).collect(),
            notifies: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            park_timeout,
            deadline: Instant::now() + TEST_DEADLINE,
        }
    }

    pub fn register(&self, core: CoreId) {
        *self.threads[core].lock().unwrap() = Some(thread::current());
    }

    pub fn check_deadline(&self) {
        assert!(Instant::now() < self.deadline, "test deadline exceeded");
    }
}

impl Notify for ThreadNotify {
    fn notify(&self, core: CoreId) {
        self.notifies.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &*self.threads[core].lock().unwrap() {
            t.unpark();
        }
    }

    fn wait(&self, _core: CoreId) {
        self.check_deadline();
        let start = Instant::now();
        thread::park_timeout(self.park_timeout);
        if start.elapsed() >= self.park_timeout {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A single thread driving several endpoints: nothing to wake, nothing to wait for.
pub struct Quiet;

impl Notify for Quiet {
    fn notify(&self, _: CoreId) {}
    fn wait(&self, _: CoreId) {}
}

pub struct Stats {
    pub notifies: u64,
    pub timeouts: u64,
}

/// Runs `body` on one std thread per core, each with its endpoint.
pub fn run_cores<F>(config: Config, body: F) -> Stats
where
    F: Fn(&mut Endpoint<'_, ThreadNotify>) + Sync,
{
    let bus = Bus::new(config, ThreadNotify::new(config.cores, Duration::from_secs(2))).unwrap();
    let barrier = Barrier::new(config.cores);
    thread::scope(|s| {
        for core in 0..config.cores {
            let (bus, barrier, body) = (&bus, &barrier, &body);
            s.spawn(move || {
                bus.notifier().register(core);
                let mut ep = bus.endpoint(core).unwrap();
                barrier.wait();
                body(&mut ep);
            });
        }
    });
    let n = bus.notifier();
    Stats {
        notifies: n.notifies.load(Ordering::Relaxed),
        timeouts: n.timeouts.load(Ordering::Relaxed),
    }
}

/// splitmix64: small, deterministic, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The contents of message `seq` from `src` to `dst`.
pub fn fill(src: CoreId, dst: CoreId, seq: u64, buf: &mut [u8]) {
    let mut rng = Rng((src as u64) << 48 ^ (dst as u64) << 40 ^ seq);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let last = rng.next().to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

pub fn message(src: CoreId, dst: CoreId, seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(src, dst, seq, &mut v);
    v
}

/// FNV-1a, 64-bit.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

pub fn env(src: CoreId, dst: CoreId, seq: u64) -> Envelope {
    Envelope { src_rank: src as u32, dst_rank: dst as u32, tag: seq as i32, comm: 42, kind: 3 }
}

/// What one exchange does: `count(src, dst)` messages from each core to each
/// other core (and to itself if the count says so), the `seq`-th of length
/// `len(src, dst, seq)`.
pub struct Traffic<'a> {
    pub count: &'a (dyn Fn(CoreId, CoreId) -> u64 + Sync),
    pub len: &'a (dyn Fn(CoreId, CoreId, u64) -> usize + Sync),
}

/// Sends this core's traffic and receives what it is owed, at the same time,
/// never blocking on one send: the progress loop of an MPI layer. Checks
/// per-pair FIFO order, headers, lengths and checksums.
pub fn exchange(ep: &mut Endpoint<'_, ThreadNotify>, traffic: &Traffic<'_>) {
    let me = ep.core();
    let cores = ep.bus().config().cores;
    // Outgoing, in the order they must be sent (round-robin over peers).
    let max = (0..cores).map(|d| (traffic.count)(me, d)).max().unwrap_or(0);
    let mut outgoing = (0..max).flat_map(|seq| {
        (0..cores).filter(move |&d| seq < (traffic.count)(me, d)).map(move |d| (d, seq))
    });
    let mut next_out = outgoing.next();
    let mut pending: Vec<(SendHandle, Vec<u8>)> = Vec::new();
    let mut next_seq = vec![0u64; cores];
    let owed: Vec<u64> = (0..cores).map(|s| (traffic.count)(s, me)).collect();
    loop {
        let mut progressed = false;
        if let Some((dst, seq)) = next_out {
            let data = message(me, dst, seq, (traffic.len)(me, dst, seq));
            // SAFETY: `data` is kept in `pending` until its handle tests complete.
            match unsafe { ep.try_isend(dst, env(me, dst, seq), &data) } {
                Ok(h) => {
                    pending.push((h, data));
                    next_out = outgoing.next();
                    progressed = true;
                }
                Err(SendError::WouldBlock) => {}
                Err(e) => panic!("send failed: {e}"),
            }
        }
        while let Some(m) = ep.poll() {
            let src = m.src_core();
            let seq = next_seq[src];
            let h = m.header();
            assert_eq!(h.env, env(src, me, seq), "FIFO order or header broken");
            let len = (traffic.len)(src, me, seq);
            assert_eq!(h.len, len as u64);
            assert_eq!(checksum(m.payload()), checksum(&message(src, me, seq, len)));
            ep.release(m);
            next_seq[src] += 1;
            progressed = true;
        }
        let before = pending.len();
        pending.retain(|(h, _)| !ep.test(h));
        progressed |= pending.len() != before;
        if next_out.is_none() && pending.is_empty() && next_seq == owed {
            return;
        }
        if !progressed {
            ep.bus().notifier().check_deadline();
            ep.wait_for_work();
        }
    }
}
