//! Which algorithm a collective runs: the one place that decides, by message size
//! and rank count (and, in `topology::plan`, by where the ranks live).
//!
//! Thresholds are MPICH's defaults unless a comment cites a measurement of ours.

/// All-reduce of at most this many bytes uses recursive doubling (log2 n exchanges of
/// the whole vector: latency-bound sizes). MPICH's `MPIR_CVAR_ALLREDUCE_SHORT_MSG_SIZE`.
pub(crate) const ALL_REDUCE_SHORT_MAX_BYTES: usize = 2048;

/// Above this many bytes per rank, a ring all-reduce replaces Rabenseifner's on rank
/// counts that are not a power of two. Rabenseifner first folds the 2·(n − 2^k) extra
/// ranks in and out, a whole-vector transfer each way on the critical path (~2 vectors
/// more than the ring's 2·(n−1)/n), but it takes 2·log2(2^k) + 2 steps where the ring
/// takes 2·(n−1): the ring wins once the bytes saved outweigh the extra steps, which
/// grows with n. Cost model, MEASURE-ME: per-step latency α ≈ 2 µs and copy speed
/// β ≈ 5 GB/s put the break-even at ≈ 8–16 KiB per rank.
pub(crate) const ALL_REDUCE_RING_MIN_BYTES_PER_RANK: usize = 16 * 1024;

/// Broadcast of fewer bytes uses the binomial tree. MPICH's
/// `MPIR_CVAR_BCAST_SHORT_MSG_SIZE`.
pub(crate) const BROADCAST_SHORT_MAX_BYTES: usize = 12 * 1024;

/// Below this many ranks broadcast always uses the binomial tree (its root sends
/// log2 n whole copies; scatter + all-gather costs 2·(n−1)/n copies but n − 1 + log2 n
/// steps). MPICH's `MPIR_CVAR_BCAST_MIN_PROCS`.
pub(crate) const BROADCAST_MIN_RANKS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllReduce {
    /// Latency-optimal: log2 n exchanges of the whole vector.
    RecursiveDoubling,
    /// Reduce-scatter by recursive halving + all-gather by recursive doubling.
    Rabenseifner,
    /// Reduce-scatter + all-gather around a ring.
    Ring,
}

/// `bytes` of `count` values on `ranks` ranks.
pub(crate) fn all_reduce(bytes: usize, count: usize, ranks: usize, commutative: bool) -> AllReduce {
    let power = if ranks.is_power_of_two() { ranks } else { ranks.next_power_of_two() >> 1 };
    if ranks < 2 || bytes <= ALL_REDUCE_SHORT_MAX_BYTES || count < power {
        return AllReduce::RecursiveDoubling;
    }
    // The ring reduces each chunk starting from a different rank: commutative only.
    // Rabenseifner keeps rank order, so it serves every associative operation.
    if commutative && power != ranks && bytes >= ALL_REDUCE_RING_MIN_BYTES_PER_RANK * ranks {
        AllReduce::Ring
    } else {
        AllReduce::Rabenseifner
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broadcast {
    Binomial,
    /// Van de Geijn: binomial scatter + ring all-gather.
    ScatterAllGather,
}

pub(crate) fn broadcast(bytes: usize, count: usize, ranks: usize) -> Broadcast {
    if bytes < BROADCAST_SHORT_MAX_BYTES || ranks < BROADCAST_MIN_RANKS || count < ranks {
        Broadcast::Binomial
    } else {
        Broadcast::ScatterAllGather
    }
}
