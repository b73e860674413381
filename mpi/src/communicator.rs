//! Universes and communicators: who is in a group, how ranks translate to world
//! ranks, and the error handler that every public call goes through.

use alloc::format;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{OnceCell, RefCell};

use crate::collective::internal;
use crate::collective::shm::ShmComm;
use crate::collective::topology::Topology;
use crate::engine::Engine;
use crate::environment::{self, Location, RankSetup};
use crate::error::{fail, ErrorClass, ErrorMode, MpiError, MpiResult};
use crate::point_to_point::{AnyProcess, Process};
use crate::{Rank, TAG_UB};

/// One rank's MPI library instance: `MPI_Init` to `MPI_Finalize`.
pub struct Universe {
    engine: Rc<RefCell<Engine>>,
    world: Rc<CommState>,
}

impl Universe {
    /// Builds the library for one rank from an explicit setup (VM glue, host tests).
    pub fn with_setup(setup: RankSetup) -> Universe {
        let engine = Rc::new(RefCell::new(Engine::new(setup)));
        let world = {
            let engine_ref = engine.borrow();
            let size = engine_ref.world_size();
            CommState::new(engine.clone(), 0, (0..size).collect(), engine_ref.world_rank())
        };
        Universe { engine, world: Rc::new(world) }
    }

    /// `MPI_COMM_WORLD`.
    pub fn world(&self) -> SimpleCommunicator {
        SimpleCommunicator { state: self.world.clone() }
    }

    /// `MPI_Comm_set_errhandler` for every communicator of this rank.
    pub fn set_error_mode(&self, mode: ErrorMode) {
        self.engine.borrow_mut().error_mode = mode;
    }

    pub fn error_mode(&self) -> ErrorMode {
        self.engine.borrow().error_mode
    }
}

impl Drop for Universe {
    fn drop(&mut self) {
        // MPI_Finalize: push out acknowledgements peers may still wait for. Bounded, so a
        // drop during unwinding can never block.
        if let Ok(mut engine) = self.engine.try_borrow_mut() {
            for _ in 0..1000 {
                if !engine.progress() {
                    break;
                }
            }
        }
    }
}

/// Shared state of one communicator on one rank.
pub struct CommState {
    pub(crate) engine: Rc<RefCell<Engine>>,
    /// Communicator id; contexts `2 id` (point-to-point) and `2 id + 1` (collectives).
    id: u32,
    /// World rank of each local rank.
    group: Vec<u32>,
    /// Local rank of each world rank (-1 if not a member).
    world_to_local: Vec<Rank>,
    rank: Rank,
    /// Where the ranks live, computed at the first collective that asks.
    topology: OnceCell<Topology>,
    /// Shared memory for small collectives, when every rank lives in this VM (looked
    /// up at the first collective that asks).
    shm: OnceCell<Option<ShmComm>>,
}

impl CommState {
    fn new(engine: Rc<RefCell<Engine>>, id: u32, group: Vec<u32>, my_world_rank: u32) -> CommState {
        let world_size = engine.borrow().world_size() as usize;
        let mut world_to_local = alloc::vec![-1; world_size];
        for (local, &world) in group.iter().enumerate() {
            world_to_local[world as usize] = local as Rank;
        }
        let rank = world_to_local[my_world_rank as usize];
        CommState { engine, id, group, world_to_local, rank, topology: OnceCell::new(), shm: OnceCell::new() }
    }

    pub(crate) fn rank(&self) -> Rank {
        self.rank
    }
    pub(crate) fn size(&self) -> Rank {
        self.group.len() as Rank
    }
    pub(crate) fn p2p_context(&self) -> u32 {
        2 * self.id
    }
    pub(crate) fn collective_context(&self) -> u32 {
        2 * self.id + 1
    }
    pub(crate) fn world_rank_of(&self, rank: Rank) -> u32 {
        self.group[rank as usize]
    }
    pub(crate) fn local_rank_of(&self, world: u32) -> Rank {
        self.world_to_local[world as usize]
    }
    /// This communicator's ranks grouped by VM.
    pub(crate) fn topology(&self) -> &Topology {
        self.topology.get_or_init(|| Topology::of(&self.locations()))
    }
    /// The shared-memory path of small collectives (every rank in this VM, two or more).
    pub(crate) fn shm(&self) -> Option<&ShmComm> {
        self.shm
            .get_or_init(|| {
                if self.group.len() < 2 || self.topology().spans_vms() {
                    return None;
                }
                let arena = self.engine.borrow().env.collective_arena(self.collective_context(), &self.group)?;
                (arena.members() == self.group.len()).then(|| ShmComm::new(arena, self.rank as usize))
            })
            .as_ref()
    }
    /// Location (VM, core) of each rank of this communicator.
    pub(crate) fn locations(&self) -> Vec<Location> {
        let engine = self.engine.borrow();
        self.group.iter().map(|&world| engine.locations()[world as usize]).collect()
    }

    pub(crate) fn check_rank(&self, rank: Rank, class: ErrorClass) -> MpiResult<()> {
        if rank < 0 || rank >= self.size() {
            return fail(class, format!("rank {} outside communicator of size {}", rank, self.size()));
        }
        Ok(())
    }

    pub(crate) fn check_tag(tag: crate::Tag) -> MpiResult<()> {
        if !(0..=TAG_UB).contains(&tag) {
            return fail(ErrorClass::Tag, format!("tag {} outside 0..={}", tag, TAG_UB));
        }
        Ok(())
    }

    /// The error handler: returns the value, or handles the error by the rank's mode.
    pub(crate) fn check<T>(&self, result: MpiResult<T>) -> T {
        match result {
            Ok(value) => value,
            Err(error) => self.raise(error),
        }
    }

    pub(crate) fn raise(&self, error: MpiError) -> ! {
        let mut engine = self.engine.borrow_mut();
        match engine.error_mode {
            ErrorMode::Fatal => {
                let message = format!("rank {}: {}", engine.world_rank(), error);
                engine.env.abort(error.class.code(), &message)
            }
            ErrorMode::Return => {
                let message = format!("rank {}: {}", engine.world_rank(), error);
                engine.last_error = Some(error);
                drop(engine);
                panic!("MPI error returned: {}", message)
            }
        }
    }

    /// Agrees on a fresh communicator id among this communicator's ranks.
    fn new_id(&self) -> MpiResult<u32> {
        let mine = self.engine.borrow().next_context_id;
        let agreed = internal::all_reduce_max_u32(self, mine)?;
        self.engine.borrow_mut().next_context_id = agreed + 1;
        Ok(agreed)
    }

    fn duplicate(&self) -> MpiResult<CommState> {
        let id = self.new_id()?;
        let me = self.world_rank_of(self.rank);
        Ok(CommState::new(self.engine.clone(), id, self.group.clone(), me))
    }

    fn split(&self, color: Color, key: Key) -> MpiResult<Option<CommState>> {
        let id = self.new_id()?;
        let mine: [i32; 2] = [color.0.unwrap_or(-1), key];
        let all = internal::all_gather_pairs(self, mine)?;
        let Some(my_color) = color.0 else { return Ok(None) };
        let mut members: Vec<(i32, Rank)> = all
            .iter()
            .enumerate()
            .filter(|(_, pair)| pair[0] == my_color)
            .map(|(rank, pair)| (pair[1], rank as Rank))
            .collect();
        members.sort();
        let group = members.iter().map(|&(_, rank)| self.world_rank_of(rank)).collect();
        let me = self.world_rank_of(self.rank);
        Ok(Some(CommState::new(self.engine.clone(), id, group, me)))
    }
}

/// Ordering key for `split_by_color_with_key`.
pub type Key = i32;

/// The color of a split: ranks of one color form one new communicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Color(Option<i32>);

impl Color {
    /// A color; must be non-negative.
    pub fn with_value(value: i32) -> Color {
        assert!(value >= 0, "Color::with_value: colors are non-negative");
        Color(Some(value))
    }
    /// `MPI_UNDEFINED`: the rank gets no new communicator.
    pub fn undefined() -> Color {
        Color(None)
    }
}

/// A communicator (`MPI_Comm`) — the one concrete kind we have.
#[derive(Clone)]
pub struct SimpleCommunicator {
    pub(crate) state: Rc<CommState>,
}

mod sealed {
    pub trait AsCommState {
        fn comm_state(&self) -> &alloc::rc::Rc<super::CommState>;
    }
}
pub(crate) use sealed::AsCommState;

impl AsCommState for SimpleCommunicator {
    fn comm_state(&self) -> &Rc<CommState> {
        &self.state
    }
}

/// Communicator operations (rsmpi's `Communicator`).
pub trait Communicator: AsCommState {
    fn size(&self) -> Rank {
        self.comm_state().size()
    }
    fn rank(&self) -> Rank {
        self.comm_state().rank()
    }
    /// The process with rank `rank`. An invalid rank is reported when it is used:
    /// class RANK for point-to-point, class ROOT for collectives.
    fn process_at_rank(&self, rank: Rank) -> Process<'_> {
        Process::new(self.comm_state(), rank)
    }
    /// `MPI_ANY_SOURCE`.
    fn any_process(&self) -> AnyProcess<'_> {
        AnyProcess::new(self.comm_state())
    }
    fn this_process(&self) -> Process<'_> {
        let state = self.comm_state();
        Process::new(state, state.rank())
    }
    /// `MPI_Comm_dup` (collective).
    fn duplicate(&self) -> SimpleCommunicator {
        let state = self.comm_state();
        let new = state.check(state.duplicate());
        SimpleCommunicator { state: Rc::new(new) }
    }
    /// `MPI_Comm_split` with key 0 (collective).
    fn split_by_color(&self, color: Color) -> Option<SimpleCommunicator> {
        self.split_by_color_with_key(color, 0)
    }
    /// `MPI_Comm_split` (collective): ranks ordered by `key`, then by rank here.
    fn split_by_color_with_key(&self, color: Color, key: Key) -> Option<SimpleCommunicator> {
        let state = self.comm_state();
        state.check(state.split(color, key)).map(|new| SimpleCommunicator { state: Rc::new(new) })
    }
    /// `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)` (collective): the ranks that share
    /// memory with this one — those of its VM — ordered by `key`, then by rank.
    fn split_shared(&self, key: Key) -> SimpleCommunicator {
        let state = self.comm_state();
        let vm = state.topology().group_of(state.rank());
        let color = Color::with_value(vm as i32);
        let new = state.check(state.split(color, key)).expect("a defined color always gives a communicator");
        SimpleCommunicator { state: Rc::new(new) }
    }
    /// `MPI_Abort`: ends the whole job with `errorcode`.
    fn abort(&self, errorcode: i32) -> ! {
        let state = self.comm_state();
        let engine = state.engine.borrow();
        let message = format!("rank {}: MPI_Abort({})", engine.world_rank(), errorcode);
        engine.env.abort(errorcode, &message)
    }
}

impl Communicator for SimpleCommunicator {}

/// `mpi::initialize()`: builds this rank's universe from the installed platform.
/// `None` if no platform is installed, this thread is not a rank, or it already
/// initialized.
pub fn initialize() -> Option<Universe> {
    environment::platform()?.setup_current_rank().map(Universe::with_setup)
}
