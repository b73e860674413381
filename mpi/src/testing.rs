//! Host harness (feature `std`, and this crate's tests): ranks as std threads over an
//! in-memory transport, with a time limit on every job.
//!
//! ```ignore
//! let sums = mpi::testing::spawn_world(4, |universe| { /* rank code */ });
//! ```

use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::format;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::communicator::{Communicator, Universe};
use crate::environment::{self, Environment, Location, Platform, RankSetup};
use crate::error::{ErrorMode, MpiError};
use crate::router::{Reach, RouteTable};
use crate::transport::{Header, SendTicket, Transport, TransportError};

/// Shape of a host job.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    pub size: usize,
    /// Ranks are spread over this many (pretend) VMs, as `placement` says.
    pub vms: usize,
    pub placement: Placement,
    /// Messages longer than this complete their send only once received, like a
    /// rendezvous transport.
    pub eager_limit: usize,
    /// The job fails if it has not ended by then.
    pub timeout: Duration,
    /// What carries messages between ranks of one (pretend) VM.
    pub fabric: Fabric,
    /// Over intra-vbus: ranks sharing a core take turns like the VM's cooperative
    /// rank threads: one runs at a time, and the core switches to another only when
    /// the running rank yields (`Machine::yield_now`) or waits (`Notify::wait`).
    pub cooperative: bool,
}

/// How ranks are spread over the (pretend) VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Consecutive ranks share a VM (as `toro-mpirun` places them).
    Blocks,
    /// Rank r on VM r mod vms.
    RoundRobin,
}

/// The transport between ranks of the same VM in a host job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fabric {
    /// Shared in-memory queues (`MemoryFabric`), for every pair of ranks.
    Memory,
    /// The real intra-vbus rings (`mpi::vbus`), one bus per VM with `cores` cores
    /// (0: one core per rank); ranks of a VM share cores round-robin. Ranks in other
    /// VMs are reached through the in-memory fabric (the router's `OtherVm` row).
    IntraVbus { cores: usize },
}

impl WorldOptions {
    pub fn new(size: usize) -> WorldOptions {
        WorldOptions { size, vms: 1, placement: Placement::Blocks, eager_limit: usize::MAX, timeout: Duration::from_secs(60), fabric: Fabric::Memory, cooperative: false }
    }
}

// ---- in-memory transport ----

struct Packet {
    header: Header,
    payload: Vec<u8>,
    /// Set when the receiver took the payload (for sends past the eager limit).
    delivered: Option<Arc<AtomicBool>>,
}

/// Shared inboxes of all ranks: one FIFO queue per destination, so messages of each
/// (source, destination) pair stay in order.
pub struct MemoryFabric {
    inboxes: Vec<Mutex<VecDeque<Packet>>>,
    /// One per rank: rung when a message arrives or a rendezvous send completes, so a
    /// waiting rank sleeps instead of spinning (like halt-until-IPI in the VM).
    doorbells: Vec<Doorbell>,
    eager_limit: usize,
}

#[derive(Default)]
struct Doorbell {
    rings: Mutex<u64>,
    bell: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        if let Ok(mut rings) = self.rings.lock() {
            *rings += 1;
            self.bell.notify_all();
        }
    }

    /// Waits (at most `limit`) until the bell rang after `seen`; returns the count.
    fn wait_after(&self, seen: u64, limit: Duration) -> u64 {
        let Ok(rings) = self.rings.lock() else { return seen };
        if *rings != seen {
            return *rings;
        }
        match self.bell.wait_timeout(rings, limit) {
            Ok((rings, _)) => *rings,
            Err(_) => seen,
        }
    }
}

impl MemoryFabric {
    pub fn new(size: usize, eager_limit: usize) -> Arc<MemoryFabric> {
        Arc::new(MemoryFabric {
            inboxes: (0..size).map(|_| Mutex::new(VecDeque::new())).collect(),
            doorbells: (0..size).map(|_| Doorbell::default()).collect(),
            eager_limit,
        })
    }
}

/// One rank's endpoint of a `MemoryFabric`.
pub struct MemoryEndpoint {
    fabric: Arc<MemoryFabric>,
    me: u32,
    in_flight: BTreeMap<u64, Arc<AtomicBool>>,
    next_ticket: u64,
    peeked: Option<Packet>,
}

impl MemoryEndpoint {
    pub fn new(fabric: Arc<MemoryFabric>, me: u32) -> MemoryEndpoint {
        MemoryEndpoint { fabric, me, in_flight: BTreeMap::new(), next_ticket: 0, peeked: None }
    }
}

impl Transport for MemoryEndpoint {
    fn start_send(&mut self, header: &Header, payload: &[u8]) -> Result<SendTicket, TransportError> {
        let inbox = self.fabric.inboxes.get(header.dest as usize).ok_or(TransportError::Unreachable)?;
        self.next_ticket += 1;
        let delivered = (payload.len() > self.fabric.eager_limit).then(|| Arc::new(AtomicBool::new(false)));
        if let Some(flag) = &delivered {
            self.in_flight.insert(self.next_ticket, flag.clone());
        }
        inbox.lock().map_err(|_| TransportError::Failed)?.push_back(Packet { header: *header, payload: payload.to_vec(), delivered });
        self.fabric.doorbells[header.dest as usize].ring();
        Ok(SendTicket(self.next_ticket))
    }

    fn send_complete(&mut self, ticket: SendTicket) -> bool {
        match self.in_flight.get(&ticket.0) {
            None => true,
            Some(flag) if flag.load(Ordering::Acquire) => {
                self.in_flight.remove(&ticket.0);
                true
            }
            Some(_) => false,
        }
    }

    fn peek(&mut self) -> Option<Header> {
        if self.peeked.is_none() {
            self.peeked = self.fabric.inboxes[self.me as usize].lock().ok()?.pop_front();
        }
        self.peeked.as_ref().map(|packet| packet.header)
    }

    fn receive_payload(&mut self, into: &mut [u8]) {
        if let Some(packet) = self.peeked.take() {
            into.copy_from_slice(&packet.payload);
            if let Some(flag) = packet.delivered {
                flag.store(true, Ordering::Release);
                self.fabric.doorbells[packet.header.source as usize].ring();
            }
        }
    }
}

// ---- environment ----

/// State shared by the ranks of one host job.
struct Job {
    aborted: AtomicBool,
    abort_message: Mutex<Option<String>>,
}

struct ThreadEnvironment {
    rank: u32,
    locations: Vec<Location>,
    job: Arc<Job>,
    fabric: Arc<MemoryFabric>,
    /// Doorbell count seen by the last `relax`.
    seen: Cell<u64>,
    /// Over intra-vbus: the rank's waiter (sleeps on its core's wait list).
    vbus: Option<std::rc::Rc<crate::vbus::RankWaiter<HostMachine>>>,
    /// Over intra-vbus: the bus core of every rank of this rank's VM.
    core_of: Option<std::rc::Rc<crate::vbus::CoreMap>>,
}

fn clock_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Environment for ThreadEnvironment {
    fn world_rank(&self) -> u32 {
        self.rank
    }
    fn locations(&self) -> &[Location] {
        &self.locations
    }
    fn now_ns(&self) -> u64 {
        clock_start().elapsed().as_nanos() as u64
    }
    fn relax(&self) {
        if self.job.aborted.load(Ordering::Relaxed) && !std::thread::panicking() {
            panic!("rank {}: leaving a blocked MPI call because the job was aborted", self.rank);
        }
        if let Some(waiter) = &self.vbus {
            return waiter.relax();
        }
        // Sleep until something arrives for this rank (bounded, so aborts are noticed).
        let doorbell = &self.fabric.doorbells[self.rank as usize];
        self.seen.set(doorbell.wait_after(self.seen.get(), Duration::from_millis(5)));
    }
    fn block(&self) {
        match &self.vbus {
            Some(waiter) if !self.job.aborted.load(Ordering::Relaxed) => waiter.block(),
            _ => self.relax(),
        }
    }
    fn collective_arena(&self, context: u32, group: &[u32]) -> Option<Arc<crate::environment::Arena>> {
        self.vbus.as_ref().map(|waiter| waiter.net().collective_arena(context, group))
    }
    fn wake(&self, world_rank: u32) {
        if let (Some(waiter), Some(core_of)) = (&self.vbus, &self.core_of) {
            if let Some(core) = core_of.get(world_rank as usize).copied().flatten() {
                intra_vbus::Notify::notify(waiter.net().machine(), core);
            }
        }
    }
    fn yield_now(&self) {
        match &self.vbus {
            Some(waiter) => waiter.yield_now(),
            None => std::thread::yield_now(),
        }
    }
    fn abort(&self, status: i32, message: &str) -> ! {
        let text = format!("MPI job aborted (status {}): {}", status, message);
        if let Ok(mut slot) = self.job.abort_message.lock() {
            slot.get_or_insert(text.clone());
        }
        self.job.aborted.store(true, Ordering::Relaxed);
        panic!("{}", text)
    }
}

/// The host platform: the clock, and the setup of the current rank thread.
struct HostPlatform;

std::thread_local! {
    static PENDING_SETUP: RefCell<Option<RankSetup>> = const { RefCell::new(None) };
}

impl Platform for HostPlatform {
    fn setup_current_rank(&self) -> Option<RankSetup> {
        PENDING_SETUP.with(|slot| slot.borrow_mut().take())
    }
    fn now_ns(&self) -> u64 {
        clock_start().elapsed().as_nanos() as u64
    }
    fn clock_resolution_ns(&self) -> u64 {
        1
    }
}

static HOST_PLATFORM: HostPlatform = HostPlatform;

fn install_host() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        environment::install(&HOST_PLATFORM);
        // Errors caught by `catch_error` unwind on purpose; do not print them.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or("");
            if !message.starts_with(RETURNED_ERROR_PREFIX) {
                previous(info);
            }
        }));
    });
}

const RETURNED_ERROR_PREFIX: &str = "MPI error returned";

// ---- intra-vbus on std threads ----

/// Std threads as the cores of an intra-vbus bus: `wait` parks the thread on its
/// core's list, `notify` unparks every thread there (with a token for late waiters).
///
/// Cooperative mode ([`WorldOptions::cooperative`]): each core also has a turn, a
/// fair lock its running rank thread holds, so the ranks of a core run one at a time
/// like the VM's rank threads. `yield_now` passes the turn on if another rank of the
/// core is ready (and returns at once otherwise, like the VM scheduler); `wait`
/// gives it up while parked.
pub struct HostMachine {
    cores: Vec<Mutex<(bool, Vec<std::thread::Thread>)>>,
    /// Bound on one park (aborts are noticed; other fabrics are polled).
    park_limit: Duration,
    /// Cooperative mode: one turn per core.
    turns: Option<Vec<Turn>>,
}

/// A core's turn: a ticket lock (FIFO, so a yield lets every ready rank run).
#[derive(Default)]
struct Turn {
    /// (next ticket, ticket now served)
    tickets: Mutex<(u64, u64)>,
    served: Condvar,
}

impl Turn {
    fn take(&self) {
        let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let mine = t.0;
        t.0 += 1;
        while t.1 != mine {
            t = self.served.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give(&self) {
        let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        t.1 += 1;
        self.served.notify_all();
    }

    /// Whether another rank thread waits for this core.
    fn contended(&self) -> bool {
        let t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        t.0 > t.1 + 1
    }
}

std::thread_local! {
    /// Cooperative mode: the core whose turn this rank thread holds while it runs.
    static TURN_CORE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Holds a core's turn for a cooperative rank thread; gives it back when dropped
/// (also when the rank unwinds).
struct TurnGuard {
    net: Arc<crate::vbus::VbusNet<HostMachine>>,
    core: usize,
}

impl TurnGuard {
    fn enter(net: Arc<crate::vbus::VbusNet<HostMachine>>, core: usize) -> Option<TurnGuard> {
        let turns = net.machine().turns.as_ref()?;
        turns[core].take();
        TURN_CORE.with(|c| c.set(Some(core)));
        Some(TurnGuard { net, core })
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        TURN_CORE.with(|c| c.set(None));
        if let Some(turns) = &self.net.machine().turns {
            turns[self.core].give();
        }
    }
}

impl HostMachine {
    pub fn new(cores: usize, park_limit: Duration) -> HostMachine {
        HostMachine { cores: (0..cores).map(|_| Mutex::new((false, Vec::new()))).collect(), park_limit, turns: None }
    }

    /// A machine whose ranks sharing a core run one at a time (see the type's docs).
    pub fn cooperative(cores: usize, park_limit: Duration) -> HostMachine {
        HostMachine { turns: Some((0..cores).map(|_| Turn::default()).collect()), ..HostMachine::new(cores, park_limit) }
    }

    /// The turn the calling rank thread holds, in cooperative mode.
    fn my_turn(&self) -> Option<&Turn> {
        let core = TURN_CORE.with(Cell::get)?;
        self.turns.as_ref().map(|turns| &turns[core])
    }
}

impl intra_vbus::Notify for HostMachine {
    fn notify(&self, core: usize) {
        let waiters = {
            let Ok(mut list) = self.cores[core].lock() else { return };
            list.0 = true;
            core::mem::take(&mut list.1)
        };
        for thread in waiters {
            thread.unpark();
        }
    }

    fn wait(&self, core: usize) {
        {
            let Ok(mut list) = self.cores[core].lock() else { return };
            if list.0 {
                list.0 = false;
                return;
            }
            list.1.push(std::thread::current());
        }
        // An unpark between the unlock and here makes the park return at once.
        match self.my_turn() {
            Some(turn) => {
                turn.give();
                std::thread::park_timeout(self.park_limit);
                turn.take();
            }
            None => std::thread::park_timeout(self.park_limit),
        }
    }
}

impl crate::vbus::Machine for HostMachine {
    fn yield_now(&self) {
        match self.my_turn() {
            Some(turn) => {
                if turn.contended() {
                    turn.give();
                    turn.take();
                }
            }
            None => std::thread::yield_now(),
        }
    }
    fn now_ns(&self) -> u64 {
        clock_start().elapsed().as_nanos() as u64
    }
}

/// The buses of a job over intra-vbus: per world rank, its VM's net and its core.
type VbusPlan = Vec<(Arc<crate::vbus::VbusNet<HostMachine>>, usize)>;

fn vbus_plan(options: &WorldOptions, locations: &[Location], cores: usize) -> Result<VbusPlan, String> {
    let park_limit = Duration::from_millis(if options.vms > 1 { 1 } else { 5 });
    let mut plan: Vec<Option<(Arc<crate::vbus::VbusNet<HostMachine>>, usize)>> = (0..locations.len()).map(|_| None).collect();
    let mut vms: Vec<u32> = locations.iter().map(|l| l.vm).collect();
    vms.sort_unstable();
    vms.dedup();
    for vm in vms {
        let ranks: Vec<usize> = (0..locations.len()).filter(|&r| locations[r].vm == vm).collect();
        let n = if cores == 0 { ranks.len() } else { cores.min(ranks.len()) };
        let config = intra_vbus::Config {
            queue_size: 16, // small rings: back-pressure gets exercised, memory stays low
            eager_max: options.eager_limit.min(intra_vbus::DEFAULT_EAGER_MAX),
            ..intra_vbus::Config::new(n)
        };
        // Cooperative ranks wait like the VM's rank threads: only a notify ends the
        // wait (the job's timeout bounds it), so a lost wake-up hangs the test.
        let machine = if options.cooperative { HostMachine::cooperative(n, options.timeout) } else { HostMachine::new(n, park_limit) };
        let net = crate::vbus::VbusNet::new(config, machine, 20_000).map_err(|e| e.to_string())?;
        let net = Arc::new(net);
        for (position, &rank) in ranks.iter().enumerate() {
            plan[rank] = Some((net.clone(), position % n));
        }
    }
    Ok(plan.into_iter().map(|p| p.expect("every rank is in a VM")).collect())
}

fn location_of(rank: usize, options: &WorldOptions) -> Location {
    let vms = options.vms.clamp(1, options.size.max(1));
    let vm_of = |r: usize| match options.placement {
        Placement::Blocks => r * vms / options.size,
        Placement::RoundRobin => r % vms,
    };
    let vm = vm_of(rank);
    let core = (0..rank).filter(|&r| vm_of(r) == vm).count();
    Location { vm: vm as u32, core: core as u32 }
}

/// Runs `rank_main` on `options.size` rank threads; each may call `mpi::initialize()`.
/// Returns the results by rank, or the first failure (panic, abort, timeout).
pub fn run_world<R, F>(options: WorldOptions, rank_main: F) -> Result<Vec<R>, String>
where
    R: Send + 'static,
    F: Fn() -> R + Send + Sync + 'static,
{
    install_host();
    let size = options.size;
    let fabric = MemoryFabric::new(size, options.eager_limit);
    let locations: Vec<Location> = (0..size).map(|rank| location_of(rank, &options)).collect();
    let job = Arc::new(Job { aborted: AtomicBool::new(false), abort_message: Mutex::new(None) });
    let rank_main = Arc::new(rank_main);
    let plan = match options.fabric {
        Fabric::Memory => None,
        Fabric::IntraVbus { cores } => Some(vbus_plan(&options, &locations, cores)?),
    };
    let (done, finished) = mpsc::channel::<(usize, Result<R, String>)>();
    for rank in 0..size {
        let (fabric, locations, job, rank_main, done) = (fabric.clone(), locations.clone(), job.clone(), rank_main.clone(), done.clone());
        let plan = plan.clone();
        std::thread::Builder::new()
            .name(format!("rank-{}", rank))
            .spawn(move || {
                let memory: Box<dyn Transport> = Box::new(MemoryEndpoint::new(fabric.clone(), rank as u32));
                let mut environment =
                    ThreadEnvironment { rank: rank as u32, locations: locations.clone(), job: job.clone(), fabric, seen: Cell::new(0), vbus: None, core_of: None };
                let mut turn = None;
                let setup = match plan {
                    None => RankSetup { environment: Box::new(environment), transports: std::vec![memory], routes: RouteTable::single(0) },
                    Some(plan) => {
                        // Same VM: the vbus port; other VMs: the in-memory fabric.
                        let me = &plan[rank];
                        let core_of: crate::vbus::CoreMap =
                            plan.iter().map(|(net, core)| Arc::ptr_eq(net, &me.0).then_some(*core)).collect();
                        let core_of = std::rc::Rc::new(core_of);
                        environment.core_of = Some(core_of.clone());
                        let (port, waiter) = crate::vbus::rank_port(me.0.clone(), rank as u32, core_of);
                        // Cooperative: run only while holding the core's turn (until the thread ends).
                        turn = TurnGuard::enter(me.0.clone(), me.1);
                        drop(plan);
                        environment.vbus = Some(waiter);
                        RankSetup {
                            environment: Box::new(environment),
                            transports: std::vec![Box::new(port), memory],
                            routes: RouteTable::loopback_only().with(Reach::SameVm, 0).with(Reach::OtherVm, 1),
                        }
                    }
                };
                PENDING_SETUP.with(|slot| *slot.borrow_mut() = Some(setup));
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rank_main()));
                drop(turn);
                let outcome = outcome.map_err(|payload| {
                    job.aborted.store(true, Ordering::Relaxed);
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".to_string());
                    format!("rank {} failed: {}", rank, message)
                });
                let _ = done.send((rank, outcome));
            })
            .map_err(|error| error.to_string())?;
    }
    drop(done);
    let deadline = Instant::now() + options.timeout;
    let mut results: Vec<Option<R>> = (0..size).map(|_| None).collect();
    let mut failures: Vec<String> = Vec::new();
    for _ in 0..size {
        let left = deadline.saturating_duration_since(Instant::now());
        match finished.recv_timeout(left) {
            Ok((rank, Ok(value))) => results[rank] = Some(value),
            Ok((_, Err(message))) => failures.push(message),
            Err(_) => {
                job.aborted.store(true, Ordering::Relaxed);
                let missing: Vec<usize> = (0..size).filter(|&r| results[r].is_none()).collect();
                return Err(format!("job timed out after {:?}; ranks not finished: {:?}; {:?}", options.timeout, missing, failures));
            }
        }
    }
    if let Some(message) = job.abort_message.lock().ok().and_then(|slot| slot.clone()) {
        return Err(message);
    }
    if !failures.is_empty() {
        failures.sort();
        return Err(failures.join("; "));
    }
    Ok(results.into_iter().map(|value| value.expect("every rank reported")).collect())
}

/// Runs `f(universe)` on `size` rank threads (60 s limit); panics if the job fails.
pub fn spawn_world<R, F>(size: usize, f: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(Universe) -> R + Send + Sync + 'static,
{
    spawn_world_with(WorldOptions::new(size), f)
}

/// `spawn_world` with explicit options.
pub fn spawn_world_with<R, F>(options: WorldOptions, f: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(Universe) -> R + Send + Sync + 'static,
{
    match run_world(options, move || f(crate::initialize().expect("host rank setup"))) {
        Ok(results) => results,
        Err(message) => panic!("{}", message),
    }
}

/// Runs `f` with this rank in `ErrorMode::Return`: an MPI error in `f` comes back as
/// `Err` instead of ending the job.
pub fn catch_error<C: Communicator, R>(comm: &C, f: impl FnOnce() -> R) -> Result<R, MpiError> {
    let engine = comm.comm_state().engine.clone();
    let previous = core::mem::replace(&mut engine.borrow_mut().error_mode, ErrorMode::Return);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    engine.borrow_mut().error_mode = previous;
    match outcome {
        Ok(value) => Ok(value),
        Err(payload) => match engine.borrow_mut().last_error.take() {
            Some(error) => Err(error),
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// The same harness with ranks over the real intra-vbus rings (`Fabric::IntraVbus`,
/// one core per rank unless the options say otherwise): the test suites run over
/// both fabrics.
pub mod over_vbus {
    use super::*;
    pub use super::{catch_error, Placement, WorldOptions};

    fn on_vbus(mut options: WorldOptions) -> WorldOptions {
        if options.fabric == Fabric::Memory {
            options.fabric = Fabric::IntraVbus { cores: 0 };
        }
        options
    }

    pub fn run_world<R, F>(options: WorldOptions, rank_main: F) -> Result<Vec<R>, String>
    where
        R: Send + 'static,
        F: Fn() -> R + Send + Sync + 'static,
    {
        super::run_world(on_vbus(options), rank_main)
    }

    pub fn spawn_world<R, F>(size: usize, f: F) -> Vec<R>
    where
        R: Send + 'static,
        F: Fn(Universe) -> R + Send + Sync + 'static,
    {
        super::spawn_world_with(on_vbus(WorldOptions::new(size)), f)
    }

    pub fn spawn_world_with<R, F>(options: WorldOptions, f: F) -> Vec<R>
    where
        R: Send + 'static,
        F: Fn(Universe) -> R + Send + Sync + 'static,
    {
        super::spawn_world_with(on_vbus(options), f)
    }
}
