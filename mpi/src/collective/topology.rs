//! Where a communicator's ranks live, and whether a collective runs hierarchically.
//!
//! When a communicator spans several VMs, barrier, broadcast, reduce, all-reduce and
//! all-gather run inside each VM first (shared-memory rings), then among one leader
//! per VM (the network), then inside each VM again (see `hierarchical`). `plan` is the
//! single place that makes this choice.

use alloc::collections::BTreeMap;
use core::sync::atomic::{AtomicBool, Ordering};
use alloc::vec::Vec;

use crate::communicator::CommState;
use crate::environment::Location;
use crate::Rank;

/// Ranks of a communicator grouped by VM (groups ordered by VM index, ranks ascending).
pub(crate) struct Topology {
    pub(crate) vm_groups: Vec<Vec<Rank>>,
    /// Index into `vm_groups` of each rank's VM.
    group_of_rank: Vec<usize>,
    /// The groups, one after the other, list the ranks 0, 1, 2… in order (each VM holds
    /// a block of consecutive ranks, VMs in rank order): reducing inside each VM, then
    /// across VMs, keeps rank order, so non-commutative operations can go hierarchical.
    pub(crate) blocks_in_rank_order: bool,
}

impl Topology {
    pub(crate) fn of(locations: &[Location]) -> Topology {
        let mut by_vm: BTreeMap<u32, Vec<Rank>> = BTreeMap::new();
        for (rank, location) in locations.iter().enumerate() {
            by_vm.entry(location.vm).or_default().push(rank as Rank);
        }
        let vm_groups: Vec<Vec<Rank>> = by_vm.into_values().collect();
        let mut group_of_rank = alloc::vec![0; locations.len()];
        for (index, group) in vm_groups.iter().enumerate() {
            for &rank in group {
                group_of_rank[rank as usize] = index;
            }
        }
        let blocks_in_rank_order = vm_groups.iter().flatten().enumerate().all(|(i, &rank)| rank as usize == i);
        Topology { vm_groups, group_of_rank, blocks_in_rank_order }
    }

    pub(crate) fn spans_vms(&self) -> bool {
        self.vm_groups.len() > 1
    }

    /// Index of `rank`'s VM among `vm_groups`.
    pub(crate) fn group_of(&self, rank: Rank) -> usize {
        self.group_of_rank[rank as usize]
    }
}

/// How a collective is run on a communicator.
pub(crate) enum Plan<'t> {
    /// One algorithm over all ranks.
    Flat,
    /// Inside each VM, then among one leader per VM, then inside each VM again.
    Hierarchical(&'t Topology),
}

/// Set: every plan is flat (for measurements, `mpi::collective::tuning`).
static FORCED_FLAT: AtomicBool = AtomicBool::new(false);

/// Makes every collective of this process (every rank of a VM) run flat even when its
/// ranks span VMs (`false`: back to the choice by topology). All ranks of a job must
/// agree.
pub fn force_flat(flat: bool) {
    FORCED_FLAT.store(flat, Ordering::Relaxed);
}

/// Hierarchical when the ranks span VMs and at least one VM holds several of them
/// (with one rank per VM the leaders' step alone is the flat algorithm).
pub(crate) fn plan(comm: &CommState) -> Plan<'_> {
    let topology = comm.topology();
    if topology.spans_vms() && topology.vm_groups.len() < comm.size() as usize && !FORCED_FLAT.load(Ordering::Relaxed) {
        Plan::Hierarchical(topology)
    } else {
        Plan::Flat
    }
}
