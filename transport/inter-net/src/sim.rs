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
}

struct State {
    ports: Vec<Port>,
    rng: u64,
    /// Per mille of frames delivered ahead of the previous one.
    reorder_per_mille: u32,
    delivered: u64,
    reordered: u64,
}

/// The switch.
#[derive(Clone)]
pub struct Segment {
    state: Arc<spin::Mutex<State>>,
}

impl Segment {
    pub fn new(reorder_per_mille: u32, seed: u64) -> Segment {
        Segment { state: Arc::new(spin::Mutex::new(State { ports: Vec::new(), rng: seed | 1, reorder_per_mille, delivered: 0, reordered: 0 })) }
    }

    /// A new NIC on the segment.
    pub fn attach(&self, mac: [u8; 6]) -> SimPort {
        let mut state = self.state.lock();
        state.ports.push(Port { mac, queue: VecDeque::new(), cut: false });
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
        let frame = self.segment.state.lock().ports[self.index].queue.pop_front()?;
        Some((SimRx(frame), SimTx(self)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<SimTx<'_>> {
        Some(SimTx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}
