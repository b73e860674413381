//! Collectives over ranks that span VMs: inside each VM (intra-vbus rings), among one
//! leader per VM (the network), inside each VM again. Each step is a flat algorithm of
//! `internal` on a subset of the communicator, chosen there by size and rank count.
//!
//! No two steps share a pair of ranks (the ranks of one VM never meet in the leaders'
//! step, which has one rank per VM), so the steps' messages cannot be confused.

use alloc::vec::Vec;

use super::internal::{self, Group};
use super::operation::Operation;
use super::topology::Topology;
use crate::error::MpiResult;
use crate::raw::AlignedBytes;
use crate::Rank;

/// The caller's VM as a group, and its position in `topology.vm_groups`.
fn my_vm<'c>(group: &Group<'c>, topology: &Topology) -> (Group<'c>, usize) {
    let me = group.rank as Rank;
    let vm = topology.group_of(me);
    (group.subset(topology.vm_groups[vm].clone()), vm)
}

/// One leader per VM, in VM order: `special` (a root) for its own VM, the VM's first
/// rank for the others.
fn leaders(topology: &Topology, special: Option<Rank>) -> Vec<Rank> {
    let special_vm = special.map(|rank| topology.group_of(rank));
    topology
        .vm_groups
        .iter()
        .enumerate()
        .map(|(vm, ranks)| if Some(vm) == special_vm { special.unwrap_or(ranks[0]) } else { ranks[0] })
        .collect()
}

/// Position of `rank` in its VM's group.
fn position_in_vm(topology: &Topology, rank: Rank) -> usize {
    let vm = topology.group_of(rank);
    topology.vm_groups[vm].iter().position(|&r| r == rank).expect("a rank is in its VM's group")
}

pub(crate) fn barrier(group: &Group, topology: &Topology) -> MpiResult<()> {
    let (local, _) = my_vm(group, topology);
    internal::barrier(&local)?;
    if local.rank == 0 {
        internal::barrier(&group.subset(leaders(topology, None)))?;
    }
    // The leader leaves the leaders' barrier only when every VM has arrived.
    internal::broadcast(&local, 0, &mut [])
}

pub(crate) fn broadcast(group: &Group, topology: &Topology, root: usize, buffer: &mut [u8]) -> MpiResult<()> {
    let root = root as Rank;
    let (local, vm) = my_vm(group, topology);
    let root_vm = topology.group_of(root);
    let local_leader = if vm == root_vm { position_in_vm(topology, root) } else { 0 };
    if local.rank == local_leader {
        internal::broadcast(&group.subset(leaders(topology, Some(root))), root_vm, buffer)?;
    }
    internal::broadcast(&local, local_leader, buffer)
}

/// Reduction to `root`: inside each VM to its leader (the root in the root's VM), then
/// among the leaders in VM order. Rank order is kept when `blocks_in_rank_order`; the
/// caller runs non-commutative operations hierarchically only then.
pub(crate) fn reduce(group: &Group, topology: &Topology, root: usize, input: &[u8], output: Option<&mut [u8]>, op: &dyn Operation) -> MpiResult<()> {
    let root = root as Rank;
    let (local, vm) = my_vm(group, topology);
    let root_vm = topology.group_of(root);
    let local_leader = if vm == root_vm { position_in_vm(topology, root) } else { 0 };
    if local.rank != local_leader {
        return internal::reduce(&local, local_leader, input, None, op);
    }
    let mut partial = AlignedBytes::zeroed(input.len());
    internal::reduce(&local, local_leader, input, Some(partial.as_mut()), op)?;
    internal::reduce(&group.subset(leaders(topology, Some(root))), root_vm, partial.as_ref(), output, op)
}

/// All-reduce: reduce to each VM's first rank, all-reduce among those, broadcast inside
/// each VM. The leaders' all-reduce gives them bit-identical results; the rest copy.
pub(crate) fn all_reduce(group: &Group, topology: &Topology, input: &[u8], output: &mut [u8], op: &dyn Operation) -> MpiResult<()> {
    let (local, _) = my_vm(group, topology);
    if local.rank == 0 {
        let mut partial = AlignedBytes::zeroed(input.len());
        internal::reduce(&local, 0, input, Some(partial.as_mut()), op)?;
        internal::all_reduce(&group.subset(leaders(topology, None)), partial.as_ref(), output, op)?;
    } else {
        internal::reduce(&local, 0, input, None, op)?;
    }
    internal::broadcast(&local, 0, output)
}

/// All-gather of equal blocks (rank i's block at `i * block` of `output`, the caller's
/// own already in place): gather inside each VM to its first rank, all-gather of the
/// VMs' blocks among those, broadcast of the whole inside each VM.
pub(crate) fn all_gather(group: &Group, topology: &Topology, output: &mut [u8], block: usize) -> MpiResult<()> {
    let (local, vm) = my_vm(group, topology);
    let me = group.rank;
    if local.rank != 0 {
        internal::gather(&local, 0, &output[me * block..(me + 1) * block], None)?;
        return internal::broadcast(&local, 0, output);
    }
    // The VMs' blocks, one VM after the other, in VM order.
    let starts: Vec<usize> = topology.vm_groups.iter().scan(0, |at, ranks| { let start = *at; *at += ranks.len() * block; Some(start) }).collect();
    let by_vm: Vec<core::ops::Range<usize>> = topology.vm_groups.iter().zip(&starts).map(|(ranks, &start)| start..start + ranks.len() * block).collect();
    let mut packed = alloc::vec![0u8; group.size * block];
    let own = output[me * block..(me + 1) * block].to_vec();
    internal::gather(&local, 0, &own, Some(&mut packed[by_vm[vm].clone()]))?;
    internal::all_gather_ring(&group.subset(leaders(topology, None)), &mut packed, &by_vm)?;
    for (ranks, &start) in topology.vm_groups.iter().zip(&starts) {
        for (index, &rank) in ranks.iter().enumerate() {
            let at = start + index * block;
            output[rank as usize * block..(rank as usize + 1) * block].copy_from_slice(&packed[at..at + block]);
        }
    }
    internal::broadcast(&local, 0, output)
}
