//! The job plan from the kernel command line (written by the launcher, see
//! launcher/README.md): where every world rank lives.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use mpi::environment::Location;
use toro_abi::cmdline::{rank_list, Cmdline};

/// Every rank's location, and the core of each rank of this VM.
#[derive(Clone, Debug)]
pub struct JobPlan {
    /// This VM's index (`vm=`, default 0).
    pub vm: u32,
    /// Indexed by world rank.
    pub locations: Vec<Location>,
    /// Indexed by world rank: the core in this VM, `None` for ranks elsewhere.
    pub core_of: Vec<Option<usize>>,
    /// This VM's ranks, in core order (the runtime starts them on core index % cores).
    pub local_ranks: Vec<u32>,
}

fn ranks_of(list: &str, key: &str) -> Result<Vec<u32>, String> {
    rank_list(list).collect::<Result<Vec<_>, _>>().map_err(|e| format!("{key}{list}: {e}"))
}

impl JobPlan {
    /// `cores`: this VM's core count (ranks of this VM sit on position % cores,
    /// as the runtime places them).
    pub fn from_cmdline(c: &Cmdline, cores: usize) -> Result<JobPlan, String> {
        let num = |key: &str| c.get_u64(key).map_err(|e| format!("{key}=: {e}"));
        let vm = num("vm")?.unwrap_or(0) as u32;
        let local_ranks = match c.get("ranks") {
            Some(list) => ranks_of(list, "ranks=")?,
            None => vec![0],
        };
        let mut world = num("world")?.map(|w| w as usize);
        // Every VM's ranks: `place=LIST@CPUS/LIST@CPUS/...`; without it, only ours are known.
        let vms: Vec<Vec<u32>> = match c.get("place") {
            Some(place) => place
                .split('/')
                .map(|part| {
                    let (list, cpus) = part.split_once('@').ok_or_else(|| format!("place=: {part:?} is not RANKS@CPUS"))?;
                    cpus.parse::<u32>().map_err(|_| format!("place=: bad CPU count in {part:?}"))?;
                    ranks_of(list, "place=")
                })
                .collect::<Result<_, _>>()?,
            None => vec![local_ranks.clone()],
        };
        let my_list = vms.get(vm as usize).ok_or_else(|| format!("vm={vm} but place= lists {} VMs", vms.len()))?;
        if *my_list != local_ranks {
            return Err(format!("ranks= {local_ranks:?} differs from this VM's place= entry {my_list:?}"));
        }
        let highest = vms.iter().flatten().copied().max().unwrap_or(0) as usize;
        let size = *world.get_or_insert(highest + 1);
        if highest >= size {
            return Err(format!("rank {highest} is not below world={size}"));
        }
        const NOWHERE: u32 = u32::MAX;
        let mut locations = vec![Location { vm: NOWHERE, core: 0 }; size];
        let mut core_of = vec![None; size];
        for (k, list) in vms.iter().enumerate() {
            for (position, &rank) in list.iter().enumerate() {
                let slot = &mut locations[rank as usize];
                if slot.vm != NOWHERE {
                    return Err(format!("rank {rank} is placed twice"));
                }
                *slot = Location { vm: k as u32, core: position as u32 };
                if k as u32 == vm {
                    let core = position % cores.max(1);
                    slot.core = core as u32;
                    core_of[rank as usize] = Some(core);
                }
            }
        }
        if c.get("place").is_some() {
            if let Some(rank) = locations.iter().position(|l| l.vm == NOWHERE) {
                return Err(format!("rank {rank} of world={size} is in no VM of place="));
            }
        } else {
            // Ranks of other VMs, location unknown: some other VM.
            for l in locations.iter_mut().filter(|l| l.vm == NOWHERE) {
                *l = Location { vm: vm.wrapping_add(1), core: 0 };
            }
        }
        Ok(JobPlan { vm, locations, core_of, local_ranks })
    }
}
