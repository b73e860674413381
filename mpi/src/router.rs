//! Picks the transport for each peer from a table indexed by how far the peer is.
//!
//! The relation of a peer to this rank (`Reach`) comes from the job's location table;
//! `RouteTable` maps each relation to a transport index. A new transport (shared memory
//! across VMs, say) is a new `Reach` row or a new table entry, not a new branch.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::environment::Location;
use crate::transport::{Loopback, Transport};

/// Index of the built-in loopback transport in the router.
pub const LOOPBACK: usize = 0;

/// How a peer relates to this rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reach {
    /// The rank itself.
    SelfRank = 0,
    /// Another rank in the same VM.
    SameVm = 1,
    /// A rank in another VM.
    OtherVm = 2,
}

const REACH_KINDS: usize = 3;

impl Reach {
    pub fn between(me: Location, peer: Location, peer_is_me: bool) -> Reach {
        const BY_SAME_VM: [Reach; 2] = [Reach::OtherVm, Reach::SameVm];
        if peer_is_me { Reach::SelfRank } else { BY_SAME_VM[(me.vm == peer.vm) as usize] }
    }
}

/// Transport index per `Reach`; indices count the setup's transports from 1
/// (0 is the loopback). `None`: that reach is not served (sending there is an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTable {
    by_reach: [Option<usize>; REACH_KINDS],
}

impl RouteTable {
    /// Self through the loopback, nothing else reachable yet.
    pub const fn loopback_only() -> RouteTable {
        RouteTable { by_reach: [Some(LOOPBACK), None, None] }
    }

    /// Serves `reach` with the setup's transport number `index` (0-based in
    /// `RankSetup::transports`).
    pub const fn with(mut self, reach: Reach, index: usize) -> RouteTable {
        self.by_reach[reach as usize] = Some(index + 1);
        self
    }

    /// One transport for every other rank (single-VM jobs, host tests).
    pub const fn single(index: usize) -> RouteTable {
        RouteTable::loopback_only().with(Reach::SameVm, index).with(Reach::OtherVm, index)
    }
}

/// Per-rank router: the transports and the per-peer choice, resolved once at start-up.
pub(crate) struct Router {
    pub(crate) transports: Vec<Box<dyn Transport>>,
    /// Transport index per world rank, `None` if unreachable.
    peer_route: Vec<Option<usize>>,
    /// Every rank's location (for hierarchical collectives).
    pub(crate) locations: Vec<Location>,
}

impl Router {
    pub(crate) fn new(me: u32, locations: &[Location], table: RouteTable, transports: Vec<Box<dyn Transport>>) -> Router {
        let mut all: Vec<Box<dyn Transport>> = Vec::with_capacity(transports.len() + 1);
        all.push(Box::new(Loopback::default()));
        all.extend(transports);
        let my_location = locations[me as usize];
        let peer_route = locations
            .iter()
            .enumerate()
            .map(|(rank, &peer)| {
                let reach = Reach::between(my_location, peer, rank as u32 == me);
                table.by_reach[reach as usize].filter(|&index| index < all.len())
            })
            .collect();
        Router { transports: all, peer_route, locations: locations.to_vec() }
    }

    pub(crate) fn route(&self, peer: u32) -> Option<usize> {
        self.peer_route.get(peer as usize).copied().flatten()
    }
}
