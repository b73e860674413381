//! An in-memory Ethernet segment for host tests: `Segment` is a switch, each
//! `SimPort` a NIC (a smoltcp `phy::Device`). The segment can reorder frames (swap a
//! frame with the one queued before it) and cut a port off (a VM that died); wrap a
//! port in smoltcp's `FaultInjector` for drops and corruption.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

struct Port {
    mac: [u8; 6],
    queue: VecDeque<Vec<u8>>,
    cut: bool,
    /// Millisecond of the last delivery to the NIC, and frames delivered in it.
    drain_ms: u64,
    drained: u32,
}

struct State {
    ports: Vec<Port>,
    rng: u64,
    /// Per mille of frames delivered ahead of the previous one.
    reorder_per_mille: u32,
    delivered: u64,
    reordered: u64,
    /// Frames a port's queue holds at most; more are dropped (0: unbounded).
    queue_limit: usize,
    dropped: u64,
    /// At most this many frames per millisecond reach each NIC (clock in µs).
    rate: Option<(u32, fn() -> u64)>,
    /// Every NIC's IP MTU.
    mtu: usize,
}

/// The switch.
#[derive(Clone)]
pub struct Segment {
    state: Arc<spin::Mutex<State>>,
}

impl Segment {
    pub fn new(reorder_per_mille: u32, seed: u64) -> Segment {
        Segment { state: Arc::new(spin::Mutex::new(State { ports: Vec::new(), rng: seed | 1, reorder_per_mille, delivered: 0, reordered: 0, queue_limit: 0, dropped: 0, rate: None, mtu: 1500 })) }
    }

    /// A new NIC on the segment.
    pub fn attach(&self, mac: [u8; 6]) -> SimPort {
        let mut state = self.state.lock();
        state.ports.push(Port { mac, queue: VecDeque::new(), cut: false, drain_ms: 0, drained: 0 });
        SimPort { segment: self.clone(), index: state.ports.len() - 1 }
    }

    /// Cuts a port off: nothing it sends arrives, nothing reaches it (its VM died).
    pub fn cut(&self, index: usize) {
        let mut state = self.state.lock();
        if let Some(port) = state.ports.get_mut(index) {
            port.cut = true;
            port.queue.clear();
        }
    }

    /// Bounds each port's queue to `frames` (0: unbounded) and drops what does not fit,
    /// as a switch or a VM's network backend does when the receiver falls behind.
    pub fn set_queue_limit(&self, frames: usize) {
        self.state.lock().queue_limit = frames;
    }

    /// Each NIC takes at most `frames_per_ms` frames per millisecond of `clock` (µs):
    /// a bottleneck (with `set_queue_limit`, a slow receiving VM behind its switch port).
    pub fn set_rate(&self, frames_per_ms: u32, clock: fn() -> u64) {
        self.state.lock().rate = Some((frames_per_ms, clock));
    }

    /// Sets every NIC's IP MTU (default 1500, Ethernet's; the VMs use up to 65535).
    pub fn set_mtu(&self, mtu: usize) {
        self.state.lock().mtu = mtu;
    }

    /// Frames dropped because a port's queue was full.
    pub fn dropped(&self) -> u64 {
        self.state.lock().dropped
    }

    /// (frames delivered, frames reordered).
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.delivered, state.reordered)
    }

    fn deliver(&self, from: usize, frame: &[u8]) {
        let mut state = self.state.lock();
        if frame.len() < 14 || state.ports[from].cut {
            return;
        }
        let dest = &frame[0..6];
        let broadcast = dest[0] & 1 == 1;
        for index in 0..state.ports.len() {
            if index == from || state.ports[index].cut || !(broadcast || state.ports[index].mac == dest) {
                continue;
            }
            // xorshift64
            let mut x = state.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.rng = x;
            let reorder = (x % 1000) < u64::from(state.reorder_per_mille);
            if state.queue_limit != 0 && state.ports[index].queue.len() >= state.queue_limit {
                state.dropped += 1;
                continue;
            }
            let queue = &mut state.ports[index].queue;
            if reorder && !queue.is_empty() {
                let at = queue.len() - 1;
                queue.insert(at, frame.to_vec());
                state.reordered += 1;
            } else {
                queue.push_back(frame.to_vec());
            }
            state.delivered += 1;
        }
    }
}

/// One NIC of a `Segment`.
pub struct SimPort {
    segment: Segment,
    index: usize,
}

impl SimPort {
    pub fn index(&self) -> usize {
        self.index
    }
}

pub struct SimRx(Vec<u8>);
pub struct SimTx<'a>(&'a SimPort);

impl phy::RxToken for SimRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for SimTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = vec![0u8; len];
        let result = f(&mut buffer);
        self.0.segment.deliver(self.0.index, &buffer);
        result
    }
}

impl Device for SimPort {
    type RxToken<'a> = SimRx;
    type TxToken<'a> = SimTx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(SimRx, SimTx<'_>)> {
        let mut state = self.segment.state.lock();
        if let Some((per_ms, clock)) = state.rate {
            let now_ms = clock() / 1000;
            let port = &mut state.ports[self.index];
            if port.drain_ms != now_ms {
                port.drain_ms = now_ms;
                port.drained = 0;
            }
            if port.drained >= per_ms || port.queue.is_empty() {
                return None;
            }
            port.drained += 1;
        }
        let frame = state.ports[self.index].queue.pop_front()?;
        drop(state);
        Some((SimRx(frame), SimTx(self)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<SimTx<'_>> {
        Some(SimTx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 14 + self.segment.state.lock().mtu;
        caps
    }
}
