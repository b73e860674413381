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
use crate::router::RouteTable;
use crate::transport::{Header, SendTicket, Transport, TransportError};

/// Shape of a host job.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    pub size: usize,
    /// Ranks are spread over this many (pretend) VMs, in blocks.
    pub vms: usize,
    /// Messages longer than this complete their send only once received, like a
    /// rendezvous transport.
    pub eager_limit: usize,
    /// The job fails if it has not ended by then.
    pub timeout: Duration,
}

impl WorldOptions {
    pub fn new(size: usize) -> WorldOptions {
        WorldOptions { size, vms: 1, eager_limit: usize::MAX, timeout: Duration::from_secs(60) }
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
        // Sleep until something arrives for this rank (bounded, so aborts are noticed).
        let doorbell = &self.fabric.doorbells[self.rank as usize];
        self.seen.set(doorbell.wait_after(self.seen.get(), Duration::from_millis(5)));
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

fn location_of(rank: usize, options: &WorldOptions) -> Location {
    let vms = options.vms.clamp(1, options.size.max(1));
    let vm = rank * vms / options.size;
    let first = (0..options.size).position(|r| r * vms / options.size == vm).unwrap_or(0);
    Location { vm: vm as u32, core: (rank - first) as u32 }
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
    let (done, finished) = mpsc::channel::<(usize, Result<R, String>)>();
    for rank in 0..size {
        let (fabric, locations, job, rank_main, done) = (fabric.clone(), locations.clone(), job.clone(), rank_main.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("rank-{}", rank))
            .spawn(move || {
                let setup = RankSetup {
                    environment: Box::new(ThreadEnvironment { rank: rank as u32, locations, job: job.clone(), fabric: fabric.clone(), seen: Cell::new(0) }),
                    transports: std::vec![Box::new(MemoryEndpoint::new(fabric, rank as u32))],
                    routes: RouteTable::single(0),
                };
                PENDING_SETUP.with(|slot| *slot.borrow_mut() = Some(setup));
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rank_main()));
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
