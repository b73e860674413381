//! The bus: all rings of one VM, allocated once and shared by reference.

use alloc::boxed::Box;
use core::fmt;

use crate::config::{Config, ConfigError};
use crate::endpoint::Endpoint;
use crate::sync::{AtomicBool, Ordering};
use crate::virtq::Virtq;
use crate::CoreId;

/// What the bus needs from the machine.
///
/// In the VM: `notify` makes the rank threads blocked on core `core` runnable
/// and sends an IPI if that core is halted (skip it for the current core or a
/// polling one); `wait` runs other rank threads of this core or halts until
/// an IPI. In tests: unpark / park a std thread.
pub trait Notify: Sync {
    /// Wakes whatever waits on core `core` (possibly the calling core).
    /// Must have token semantics: a notify that arrives before the matching
    /// [`wait`](Notify::wait) makes that wait return at once.
    fn notify(&self, core: CoreId);

    /// Blocks the calling context, running on core `core`, until notified.
    /// May return early (spuriously); callers re-check.
    fn wait(&self, core: CoreId);
}

/// Why [`Bus::endpoint`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointError {
    /// The core index is not below `config.cores`.
    NoSuchCore,
    /// This core's endpoint was already taken (there is exactly one per core,
    /// which makes each ring single-producer, single-consumer).
    Taken,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointError::NoSuchCore => "no such core on this bus",
            EndpointError::Taken => "this core's endpoint was already taken",
        })
    }
}

/// Every ring between the cores of one VM. Allocate it once (e.g. leak it to
/// `&'static`), then each core takes its [`Endpoint`].
pub struct Bus<N: Notify> {
    config: Config,
    /// Ring `src → dst` is at `src·(cores−1) + (dst if dst < src else dst−1)`.
    rings: Box<[Virtq]>,
    taken: Box<[AtomicBool]>,
    notify: N,
}

impl<N: Notify> Bus<N> {
    /// Allocates `cores·(cores−1)` rings (see [`Config::memory_bytes`]).
    pub fn new(config: Config, notify: N) -> Result<Self, ConfigError> {
        config.validate()?;
        let n = config.cores;
        let rings = (0..n * (n - 1))
            .map(|_| Virtq::new(config.queue_size, config.slot_bytes()))
            .collect();
        let taken = (0..n).map(|_| AtomicBool::new(false)).collect();
        Ok(Bus { config, rings, taken, notify })
    }

    /// The configuration the bus was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The machine interface given to [`Bus::new`].
    pub fn notifier(&self) -> &N {
        &self.notify
    }

    /// Takes core `core`'s endpoint. Each core's endpoint can be taken once:
    /// it holds the private half of every ring the core sends or receives on.
    pub fn endpoint(&self, core: CoreId) -> Result<Endpoint<'_, N>, EndpointError> {
        let flag = self.taken.get(core).ok_or(EndpointError::NoSuchCore)?;
        // Not on the data path: a one-time claim.
        if flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(EndpointError::Taken);
        }
        Ok(Endpoint::new(self, core))
    }

    /// The ring carrying messages from core `src` to core `dst` (`src != dst`).
    #[inline]
    pub(crate) fn ring(&self, src: CoreId, dst: CoreId) -> &Virtq {
        debug_assert!(src != dst);
        let column = if dst < src { dst } else { dst - 1 };
        &self.rings[src * (self.config.cores - 1) + column]
    }
}

impl<N: Notify> fmt::Debug for Bus<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus").field("config", &self.config).finish_non_exhaustive()
    }
}
