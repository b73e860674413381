//! `toro`: what a Toro MPI application links. The ring-3 runtime, plus MPI over
//! the intra-vbus rings between the cores of the VM.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use mpi::traits::*;
//! toro::main!(main);
//! fn main() {
//!     let universe = mpi::initialize().unwrap();
//!     let world = universe.world();
//!     toro::println!("rank {} of {}", world.rank(), world.size());
//! }
//! ```
//!
//! - The job plan comes from the kernel command line the launcher writes
//!   (`world= ranks= vm= place=`, see launcher/README.md); with none of these
//!   keys the job is a singleton world of one rank.
//! - One intra-vbus [`Bus`](intra_vbus::Bus) per VM, sized from the core
//!   count, built by the first rank that starts; ranks sharing a core share
//!   its endpoint ([`mpi::vbus`]).
//! - Routes: self → loopback, same VM → intra-vbus, other VM → inter-net
//!   (TCP through smoltcp on the VM's virtio-net, started once per VM when
//!   the job has more than one VM). While the job spans VMs a waiting rank
//!   keeps polling (spins, yielding to its core's other ranks) instead of
//!   blocking: nothing else drives the network device.
//! - Waiting: spin `mpispin=NS` (default 20 µs) yielding to the other rank
//!   threads of the core, then block the rank thread; a core with nothing to
//!   run spins (`spin=`) and halts until a peer's notify sends an IPI. A
//!   `test`/`immediate_probe` that finds nothing yields to the core's other
//!   rank threads (never blocks), so a polling loop cannot starve them.
//! - Errors are fatal by default: `toro: rank R: MPI error MPI_ERR_CLASS: ...`
//!   and the VM ends with the error class as its status.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

mod job;

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use intra_vbus::{Config, CoreId, Notify};
use mpi::environment::{Environment, Location, Platform, RankSetup};
use mpi::router::{Reach, RouteTable};
use mpi::transport::{Header, SendTicket, Transport, TransportError};
use mpi::vbus::{rank_port, CoreMap, Machine, RankWaiter, VbusNet};
use spin::{Mutex, Once};

pub use job::JobPlan;
pub use mpi;
pub use toro_rt as rt;
pub use toro_rt::{print, println};

/// Names the application's main function: `toro::main!(main);`. MPI is ready
/// (`mpi::initialize()`) when it runs.
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[no_mangle]
        pub fn __toro_main() -> i32 {
            $crate::install();
            let status = $crate::rt::Termination::report($main());
            $crate::rank_returned();
            status
        }
    };
}

/// The scheduler as intra-vbus sees it: notify = make the core's waiting rank
/// threads runnable (the runtime sends the IPI only if that core halted).
pub struct RtMachine;

impl Notify for RtMachine {
    fn notify(&self, core: CoreId) {
        toro_rt::waiters::notify(core);
    }
    fn wait(&self, core: CoreId) {
        toro_rt::waiters::wait(core);
    }
}

impl Machine for RtMachine {
    fn yield_now(&self) {
        toro_rt::yield_now();
    }
    fn now_ns(&self) -> u64 {
        toro_rt::now_ns()
    }
    fn wake_all(&self, core: CoreId) {
        toro_rt::waiters::wake_all(core);
    }
}

type InterNet = inter_net::vm::VmNet<toro_rt::virtio::IdentityHal>;

struct Job {
    plan: JobPlan,
    net: Arc<VbusNet<RtMachine>>,
    /// The network to the other VMs, when there are any.
    inter: Option<Arc<InterNet>>,
}

static JOB: Once<Job> = Once::new();
static STARTED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static PLATFORM: RtPlatform = RtPlatform;

fn job() -> &'static Job {
    JOB.call_once(|| {
        let cmdline = toro_rt::cmdline();
        let plan = JobPlan::from_cmdline(&cmdline, toro_rt::core_count())
            .unwrap_or_else(|e| fatal(&format!("bad job plan on the command line: {e}")));
        let spin_ns = match cmdline.get_u64("mpispin") {
            Ok(v) => v.unwrap_or(20_000),
            Err(_) => fatal("mpispin= is not a number"),
        };
        let net = VbusNet::new(Config::new(toro_rt::core_count()), RtMachine, spin_ns)
            .unwrap_or_else(|e| fatal(&format!("intra-vbus: {e}")));
        let spans_vms = plan.locations.iter().any(|l| l.vm != plan.vm);
        let inter = spans_vms.then(|| start_inter_net(&cmdline));
        Job { plan, net: Arc::new(net), inter }
    })
}

fn start_inter_net(cmdline: &toro_abi::cmdline::Cmdline<'static>) -> Arc<InterNet> {
    let config = inter_net::NetConfig::from_keys(|k| cmdline.get(k))
        .unwrap_or_else(|e| fatal(&format!("inter-net: {e}")));
    #[allow(unsafe_code)]
    // SAFETY: called once per VM (inside JOB's call_once); the virtio-mmio
    // window is mapped for ring 3 and only this code drives the network device
    // (the console claims console devices only).
    let started = unsafe { inter_net::vm::start::<toro_rt::virtio::IdentityHal>(config, clock_us, net_fatal) };
    started.unwrap_or_else(|e| match e {
        inter_net::vm::StartError::NoDevice => fatal(
            "inter-net: this VM's job spans VMs but it has no virtio-net device (start jobs with toro-mpirun)",
        ),
        other => fatal(&format!("inter-net: cannot start the network: {other:?}")),
    })
}

fn clock_us() -> u64 {
    toro_rt::now_ns() / 1000
}

/// The inter-VM transport's fatal errors (a peer VM lost, a malformed frame).
fn net_fatal(message: &str) -> ! {
    toro_rt::println!("toro: MPI error MPI_ERR_TRANSPORT: {message}");
    toro_rt::exit(mpi::error::ErrorClass::Transport.code())
}

fn fatal(message: &str) -> ! {
    toro_rt::println!("toro: {message}");
    toro_rt::exit(toro_abi::status::BAD_MACHINE as i32)
}

/// Called by [`main!`] in every rank thread before the app's main: builds the
/// bus (once per VM) and installs the MPI platform.
pub fn install() {
    job();
    mpi::environment::install(&PLATFORM);
}

static RETURNED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Called by [`main!`] when a rank's main has returned. The last rank of the
/// VM lets the network drain first: the VM ends when its ranks have all
/// returned, and what they sent to other VMs must not die with it.
pub fn rank_returned() {
    let job = job();
    let done = RETURNED.fetch_add(1, core::sync::atomic::Ordering::AcqRel) + 1;
    if let (Some(net), true) = (&job.inter, done == job.plan.local_ranks.len()) {
        if !net.drain(50_000, 2_000_000) {
            toro_rt::println!("toro: inter-net: data to other VMs still unacknowledged after 2 s");
        }
        // Tell the peers we are gone (a FIN on each connection), so none waits for us.
        net.close(100_000);
    }
}

/// The job plan of this VM (after [`install`]).
pub fn plan() -> &'static JobPlan {
    &job().plan
}

struct RtPlatform;

impl Platform for RtPlatform {
    fn setup_current_rank(&self) -> Option<RankSetup> {
        let rank = toro_rt::rank()?;
        let job = job();
        if !STARTED.lock().insert(rank) {
            return None;
        }
        let core_of: CoreMap = job.plan.core_of.clone();
        if core_of.get(rank as usize).copied().flatten().is_none() {
            fatal(&format!("rank {rank} is not one of this VM's ranks"));
        }
        let (port, waiter) = rank_port(job.net.clone(), rank, Rc::new(core_of));
        let locations = job.plan.locations.clone();
        let elsewhere: Box<dyn Transport> = match &job.inter {
            Some(net) => inter_net::NetEndpoint::boxed(net.clone(), rank),
            None => Box::new(NoInterVm { me: rank, locations: locations.clone() }),
        };
        Some(RankSetup {
            environment: Box::new(RankEnv { rank, locations, waiter, polls_network: job.inter.is_some() }),
            transports: vec![Box::new(port), elsewhere],
            routes: RouteTable::loopback_only().with(Reach::SameVm, 0).with(Reach::OtherVm, 1),
        })
    }
    fn now_ns(&self) -> u64 {
        toro_rt::now_ns()
    }
    fn clock_resolution_ns(&self) -> u64 {
        (1_000_000_000 / toro_rt::time::tsc_hz().max(1)).max(1)
    }
}

struct RankEnv {
    rank: u32,
    locations: Vec<Location>,
    waiter: Rc<RankWaiter<RtMachine>>,
    /// Messages from other VMs arrive only while some rank polls the NIC.
    polls_network: bool,
}

impl Environment for RankEnv {
    fn world_rank(&self) -> u32 {
        self.rank
    }
    fn locations(&self) -> &[Location] {
        &self.locations
    }
    fn now_ns(&self) -> u64 {
        toro_rt::now_ns()
    }
    fn clock_resolution_ns(&self) -> u64 {
        PLATFORM.clock_resolution_ns()
    }
    fn relax(&self) {
        if self.polls_network {
            self.waiter.yield_now();
            core::hint::spin_loop();
        } else {
            self.waiter.relax();
        }
    }
    fn collective_arena(&self, context: u32, group: &[u32]) -> Option<Arc<mpi::environment::Arena>> {
        Some(self.waiter.net().collective_arena(context, group))
    }
    fn block(&self) {
        if self.polls_network {
            self.relax();
        } else {
            self.waiter.block();
        }
    }
    fn wake(&self, world_rank: u32) {
        if let Some(core) = job().plan.core_of.get(world_rank as usize).copied().flatten() {
            RtMachine.notify(core);
        }
    }
    fn yield_now(&self) {
        // A rank polling `test`/`immediate_probe` in a loop must let the other rank
        // threads of its core run: one of them may be the rank it waits for.
        self.waiter.yield_now();
    }
    fn abort(&self, status: i32, message: &str) -> ! {
        abort_job(self.rank, status, message)
    }
}

/// Prints `toro: rank R: MPI error ...` and ends the VM with `status` (1..=127).
pub fn abort_job(rank: u32, status: i32, message: &str) -> ! {
    let prefix = format!("rank {rank}: ");
    let detail = message.strip_prefix(prefix.as_str()).unwrap_or(message);
    // "MPI_ERR_Truncate: ..." → "MPI_ERR_TRUNCATE: ..."
    let detail: String = match detail.strip_prefix("MPI_ERR_").and_then(|rest| rest.split_once(':')) {
        Some((class, rest)) => format!("MPI_ERR_{}:{rest}", class.to_ascii_uppercase()),
        None => String::from(detail),
    };
    let code = if (1..=127).contains(&status) { status } else { 1 };
    toro_rt::println!("toro: rank {rank}: MPI error {detail} (exit status {code})");
    toro_rt::exit(code)
}

/// The router's `OtherVm` row in a build without the inter-VM transport: any
/// send there ends the job with a message naming the peer.
struct NoInterVm {
    me: u32,
    locations: Vec<Location>,
}

impl Transport for NoInterVm {
    fn start_send(&mut self, header: &Header, _payload: &[u8]) -> Result<SendTicket, TransportError> {
        let peer = header.dest;
        let vm = self.locations.get(peer as usize).map_or(u32::MAX, |l| l.vm);
        let message = format!(
            "MPI_ERR_Transport: rank {peer} lives in VM {vm}, and this image has no inter-VM transport (inter-net) to reach it"
        );
        abort_job(self.me, mpi::error::ErrorClass::Transport.code(), &message)
    }
    fn send_complete(&mut self, _ticket: SendTicket) -> bool {
        true
    }
    fn peek(&mut self) -> Option<Header> {
        None
    }
    fn receive_payload(&mut self, _into: &mut [u8]) {}
}
