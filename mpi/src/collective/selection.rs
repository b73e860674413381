//! Which algorithm a collective runs: the one place that decides, by message size
//! and rank count (and, in `topology::plan`, by where the ranks live).
//!
//! Thresholds are MPICH's defaults unless a comment cites a measurement of ours.
//! `force_*` override the choice for measurements (as MPICH's
//! `MPIR_CVAR_*_INTRA_ALGORITHM`), exported as `mpi::collective::tuning`.

use core::sync::atomic::{AtomicU8, Ordering};

// Measured with `examples/mpi-suite`'s `osu -- algorithms` (each algorithm forced),
// one VM under KVM on a 2-core host (np=3 and np=4 share the 2 vCPUs), µs per call:
//
//   all-reduce f32 sum     np=2: RD / Rab / ring    np=3: RD / Rab / ring    np=4: RD / Rab / ring
//   2 KiB                  2.8 / 3.3 / 3.6          4.8 / 5.4 / 7.3          6.4 / 14 / 11
//   64 KiB                 51 / 63 / 73             118 / 137 / 163          147 / 252 / 463
//   1 MiB                  971 / 871 / 1058         1900 / 1730 / 1674       3198 / 3098 / 3446
//   2 MiB                  1859 / 1949 / 2895       5267 / 5406 / 5125       7614 / 7151 / 7521
//
//   broadcast              np=2: binomial / scatter+all-gather          np=4
//   16 KiB                 1.5 / 7.4                                    4.6 / 11 (9.4 / 33)
//   1 MiB                  67 / 281                                     335 / 303 (435 / 1249)
//
// (np=4 broadcast: two runs.) A bidirectional exchange of a large message costs several
// one-way sends here, which blunts the bandwidth-optimal algorithms at these rank counts.

/// All-reduce of at most this many bytes uses recursive doubling (log2 n exchanges of
/// the whole vector: latency-bound sizes). MPICH's `MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE`;
/// measured above: recursive doubling is fastest there at np=2–4.
pub(crate) const ALL_REDUCE_SHORT_MAX_BYTES: usize = 2048;

/// Up to this many ranks recursive doubling serves every size: measured at np=2 and
/// np=4 (table above), Rabenseifner and the ring gain at most ~10 % at 1–2 MiB (within
/// run-to-run noise) and lose up to 2× below 512 KiB.
pub(crate) const ALL_REDUCE_RECURSIVE_DOUBLING_MAX_RANKS: usize = 4;

/// From this many bytes per rank, a ring all-reduce replaces the others on rank counts
/// that are not a power of two, where Rabenseifner first folds the extra ranks in and
/// out (a whole vector each way) and recursive doubling moves log2 n whole vectors.
/// Measured at np=3: the ring is fastest at 1 and 2 MiB, slower at ≤ 512 KiB.
pub(crate) const ALL_REDUCE_RING_MIN_BYTES_PER_RANK: usize = 256 * 1024;

/// Broadcast of fewer bytes uses the binomial tree. MPICH's
/// `MPIR_CVAR_BCAST_SHORT_MSG_SIZE`.
pub(crate) const BROADCAST_SHORT_MAX_BYTES: usize = 12 * 1024;

/// Below this many ranks broadcast always uses the binomial tree (its root sends
/// log2 n whole copies; scatter + all-gather costs 2·(n−1)/n copies but n − 1 + log2 n
/// steps). MPICH's `MPIR_CVAR_BCAST_MIN_PROCS`; measured above, the binomial tree wins
/// at np=2 at every size and at np=4 in most.
pub(crate) const BROADCAST_MIN_RANKS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AllReduce {
    /// Latency-optimal: log2 n exchanges of the whole vector.
    RecursiveDoubling,
    /// Reduce-scatter by recursive halving + all-gather by recursive doubling.
    Rabenseifner,
    /// Reduce-scatter + all-gather around a ring.
    Ring,
}

/// 0: no override, else 1 + the algorithm's discriminant.
static FORCED_ALL_REDUCE: AtomicU8 = AtomicU8::new(0);
static FORCED_BROADCAST: AtomicU8 = AtomicU8::new(0);

/// Makes every all-reduce of this process (every rank of a VM) use `algorithm`
/// (`None`: back to the choice by size). The ring still needs a commutative operation.
pub fn force_all_reduce(algorithm: Option<AllReduce>) {
    FORCED_ALL_REDUCE.store(algorithm.map_or(0, |a| a as u8 + 1), Ordering::Relaxed);
}

/// Makes every broadcast of this process use `algorithm` (`None`: by size).
pub fn force_broadcast(algorithm: Option<Broadcast>) {
    FORCED_BROADCAST.store(algorithm.map_or(0, |a| a as u8 + 1), Ordering::Relaxed);
}

/// `bytes` of `count` values on `ranks` ranks.
pub(crate) fn all_reduce(bytes: usize, count: usize, ranks: usize, commutative: bool) -> AllReduce {
    match FORCED_ALL_REDUCE.load(Ordering::Relaxed) {
        1 => return AllReduce::RecursiveDoubling,
        2 => return AllReduce::Rabenseifner,
        3 if commutative => return AllReduce::Ring,
        _ => {}
    }
    let power = if ranks.is_power_of_two() { ranks } else { ranks.next_power_of_two() >> 1 };
    if ranks < 2 || bytes <= ALL_REDUCE_SHORT_MAX_BYTES || count < power {
        return AllReduce::RecursiveDoubling;
    }
    // The ring reduces each chunk starting from a different rank: commutative only.
    // Rabenseifner keeps rank order, so it serves every associative operation.
    if commutative && power != ranks && bytes >= ALL_REDUCE_RING_MIN_BYTES_PER_RANK * ranks {
        AllReduce::Ring
    } else if ranks <= ALL_REDUCE_RECURSIVE_DOUBLING_MAX_RANKS {
        AllReduce::RecursiveDoubling
    } else {
        AllReduce::Rabenseifner
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Broadcast {
    Binomial,
    /// Van de Geijn: binomial scatter + ring all-gather.
    ScatterAllGather,
}

pub(crate) fn broadcast(bytes: usize, count: usize, ranks: usize) -> Broadcast {
    match FORCED_BROADCAST.load(Ordering::Relaxed) {
        1 => return Broadcast::Binomial,
        2 => return Broadcast::ScatterAllGather,
        _ => {}
    }
    if bytes < BROADCAST_SHORT_MAX_BYTES || ranks < BROADCAST_MIN_RANKS || count < ranks {
        Broadcast::Binomial
    } else {
        Broadcast::ScatterAllGather
    }
}
