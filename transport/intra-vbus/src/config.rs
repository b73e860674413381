//! Ring count and sizes, and what they cost in memory.

use core::fmt;
use core::mem::size_of;

use crate::virtq::HeaderLine;
use crate::virtq::{Desc, DeviceState, DriverState};

/// Most cores a bus connects (one VM's vCPUs).
pub const MAX_CORES: usize = 64;

/// Largest ring. VIRTIO allows 32768 entries; we stop at half that so a
/// polling side can park its event index out of the peer's reach.
pub const MAX_QUEUE_SIZE: u16 = 16384;

/// Default descriptors per ring (messages in flight from one core to another).
pub const DEFAULT_QUEUE_SIZE: u16 = 64;

/// Default eager limit, chosen by measurement (see README.md): from 2 KiB
/// on, rendezvous (one copy) beats eager (two copies) in latency and
/// bandwidth between two cores; below, eager costs about the same and keeps
/// the sender independent of the receiver.
pub const DEFAULT_EAGER_MAX: usize = 2048;

/// Above this many cores [`Config::new`] picks smaller rings.
pub const LARGE_BUS_CORES: usize = 16;

/// Default number of empty polls before a blocking call sleeps.
pub const DEFAULT_SPIN_POLLS: u32 = 20_000;

/// Shape of a bus. Every ordered pair of distinct cores gets one ring of
/// `queue_size` descriptors, each with its own `eager_max`-byte buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of cores the bus connects, 1..=[`MAX_CORES`].
    pub cores: usize,
    /// Descriptors per ring: a power of two, 2..=[`MAX_QUEUE_SIZE`]. This is
    /// how many messages may be in flight from one core to another before a
    /// send reports [`SendError::WouldBlock`](crate::SendError::WouldBlock).
    pub queue_size: u16,
    /// Messages of at most this many bytes are copied into ring buffers
    /// (eager); longer ones are sent by reference (rendezvous).
    pub eager_max: usize,
    /// Empty polls the blocking helpers spin before they sleep. Waking a
    /// halted vCPU costs ~136 µs under PVM and ~1 µs on VMX: tune per machine.
    pub spin_polls: u32,
}

/// Why a [`Config`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `cores` is 0 or above [`MAX_CORES`].
    Cores,
    /// `queue_size` is not a power of two in 2..=[`MAX_QUEUE_SIZE`].
    QueueSize,
    /// `eager_max` is above 1 GiB (descriptor lengths are 32-bit).
    EagerMax,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::Cores => "cores must be in 1..=64",
            ConfigError::QueueSize => "queue_size must be a power of two in 2..=16384",
            ConfigError::EagerMax => "eager_max must be at most 1 GiB",
        })
    }
}

/// Round up to whole cache lines, so that no two rings' parts share one.
pub(crate) const fn cache_lines(bytes: usize) -> usize {
    bytes.div_ceil(64) * 64
}

impl Config {
    /// Defaults for `cores` cores: up to [`LARGE_BUS_CORES`] cores,
    /// [`DEFAULT_QUEUE_SIZE`] descriptors of [`DEFAULT_EAGER_MAX`] bytes per
    /// ring (7.7 MB at 8 cores); above, 16 descriptors of 1 KiB, since the
    /// ring count grows as cores² (73 MB instead of 555 MB at 64 cores).
    pub const fn new(cores: usize) -> Self {
        let large = cores > LARGE_BUS_CORES;
        Config {
            cores,
            queue_size: if large { 16 } else { DEFAULT_QUEUE_SIZE },
            eager_max: if large { 1024 } else { DEFAULT_EAGER_MAX },
            spin_polls: DEFAULT_SPIN_POLLS,
        }
    }

    /// Checks the limits documented on each field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cores == 0 || self.cores > MAX_CORES {
            return Err(ConfigError::Cores);
        }
        let q = self.queue_size;
        if !(2..=MAX_QUEUE_SIZE).contains(&q) || !q.is_power_of_two() {
            return Err(ConfigError::QueueSize);
        }
        if self.eager_max > 1 << 30 {
            return Err(ConfigError::EagerMax);
        }
        Ok(())
    }

    /// Bytes of one eager buffer: `eager_max` rounded up to cache lines.
    pub const fn slot_bytes(&self) -> usize {
        cache_lines(self.eager_max)
    }

    /// Shared bytes of one ring (one ordered core pair):
    /// descriptor table + header table + available ring + used ring + eager buffers.
    pub const fn ring_bytes(&self) -> usize {
        let q = self.queue_size as usize;
        cache_lines(q * size_of::<Desc>())
            + q * size_of::<HeaderLine>()
            + cache_lines(2 * (3 + q)) // avail: flags, idx, ring[q], used_event
            + cache_lines(2 * 3 + 8 * q) // used: flags, idx, ring[q] of (id, len), avail_event
            + q * self.slot_bytes()
    }

    /// Private bookkeeping per ring, kept in the [`Endpoint`](crate::Endpoint)s, each
    /// part in cache lines of its own (it is written on every message): the sender's
    /// indices (one line) and per descriptor an in-flight and a rendezvous flag and a
    /// generation counter (8 B), the receiver's indices (one line).
    pub const fn private_ring_bytes(&self) -> usize {
        size_of::<DriverState>() + cache_lines(8 * self.queue_size as usize) + size_of::<DeviceState>()
    }

    /// Total bytes of a bus: `cores·(cores−1)` rings, shared and private parts.
    pub const fn memory_bytes(&self) -> usize {
        let rings = self.cores * self.cores.saturating_sub(1);
        rings * (self.ring_bytes() + self.private_ring_bytes())
    }
}
