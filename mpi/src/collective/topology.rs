//! Where a communicator's ranks live, for hierarchical collectives.
//!
//! Hook: when a communicator spans several VMs, barrier, broadcast and all-reduce
//! should run inside each VM first (fast shared-memory rings), then among one leader
//! per VM (network), then inside each VM again. `plan` is the single place that makes
//! this choice; today every plan runs the flat algorithms, because only single-VM jobs
//! exist (the inter-VM transport is a later issue).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::communicator::CommState;
use crate::Rank;

/// Ranks of a communicator grouped by VM (groups ordered by VM index, ranks ascending).
pub(crate) struct Topology {
    pub(crate) vm_groups: Vec<Vec<Rank>>,
}

impl Topology {
    pub(crate) fn of(comm: &CommState) -> Topology {
        let mut by_vm: BTreeMap<u32, Vec<Rank>> = BTreeMap::new();
        for (rank, location) in comm.locations().iter().enumerate() {
            by_vm.entry(location.vm).or_default().push(rank as Rank);
        }
        Topology { vm_groups: by_vm.into_values().collect() }
    }

    pub(crate) fn spans_vms(&self) -> bool {
        self.vm_groups.len() > 1
    }
}

/// How a collective is run on a communicator.
pub(crate) enum Plan {
    /// One algorithm over all ranks.
    Flat,
    /// Inside each VM, then among VM leaders (the first rank of each group).
    /// Planned: falls back to `Flat` until the inter-VM transport exists.
    #[allow(dead_code)] // read once hierarchical algorithms exist
    Hierarchical(Topology),
}

pub(crate) fn plan(comm: &CommState) -> Plan {
    let topology = Topology::of(comm);
    if topology.spans_vms() { Plan::Hierarchical(topology) } else { Plan::Flat }
}
