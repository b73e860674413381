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
//!   the job has more than one VM).
//! - Waiting: spin `mpispin=NS` (default 20 µs) yielding to the other rank
//!   threads of the core, then block the rank thread; a core with nothing to
//!   run spins (`spin=`) and halts until a peer's notify sends an IPI. A
//!   `test`/`immediate_probe` that finds nothing yields to the core's other
//!   rank threads (never blocks), so a polling loop cannot starve them.
//! - Waiting while the job spans VMs: the same spin (it polls the NIC too),
//!   then the rank blocks on its core's rings *and* the network
//!   ([`NetWait`]): it is woken by a notify from its own VM, by whichever rank
//!   polls the NIC and finds something for it (a message, a send completed),
//!   by the NIC's receive interrupt (armed while any rank of the VM is blocked,
//!   routed to every core: it ends the halt of every idle core, whose blocked
//!   ranks then poll), or by the network's next timer (smoltcp's retransmission,
//!   delayed ACK, keep-alive; at most [`NET_WAIT_LIMIT_NS`]). A core whose
//!   ranks are all blocked that way halts at once with the APIC timer armed
//!   for that deadline (virtio-mmio: the line the machine names, through the
//!   IOAPIC; virtio-pci on q35: an MSI-X message to the same vector).
//!   `netwait=spin` (or a NIC without an interrupt) keeps the old way: waiting
//!   ranks spin, polling the NIC.
//! - Tuning keys (`mpispin=`, `netwait=`, `netirq=CORE`: the NIC's interrupt
//!   to that core only) are read from the kernel command line, else from the
//!   environment as `TORO_MPISPIN`, `TORO_NETWAIT`, `TORO_NETIRQ`
//!   (`toro-mpirun -x TORO_NETWAIT=spin`); `TORO_STATS=1` prints each VM's
//!   traps, NIC register accesses and messages when it ends (jobs spanning VMs).
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
use mpi::vbus::{rank_port, CoreMap, Machine, RankWaiter, VbusNet, WakeSource};
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
    /// Rank threads are spawned on their core and stay there; the scheduler switches
    /// threads only when one yields or waits; and the MPI objects are `Rc`s, so only a
    /// rank's own thread calls into its port.
    const COOPERATIVE_CORES: bool = true;

    fn yield_now(&self) {
        toro_rt::yield_now();
    }
    fn now_ns(&self) -> u64 {
        toro_rt::now_ns()
    }
    fn wake_all(&self, core: CoreId) {
        toro_rt::waiters::wake_all(core);
    }
    fn wait_until(&self, core: CoreId, deadline_ns: u64) {
        toro_rt::waiters::wait_until(core, deadline_ns);
    }
}

type InterNet = inter_net::vm::VmNet<toro_rt::virtio::IdentityHal>;

struct Job {
    plan: JobPlan,
    net: Arc<VbusNet<RtMachine>>,
    /// The network to the other VMs, when there are any.
    inter: Option<Arc<InterNet>>,
    /// Ranks may block on the network (its receive interrupt is routed to the cores).
    net_blocks: bool,
    /// A waiting rank spins this long before it blocks (`mpispin=`).
    spin_ns: u64,
}

/// A rank blocked on the network looks again after this long at the latest, even
/// with no network timer due: the bound on any missed wake-up. Each expiry costs a
/// halted core a few VM exits (≈ 0.3 ms under PVM).
pub const NET_WAIT_LIMIT_NS: u64 = 20_000_000;

static JOB: Once<Job> = Once::new();
static STARTED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static PLATFORM: RtPlatform = RtPlatform;

fn job() -> &'static Job {
    JOB.call_once(|| {
        let cmdline = toro_rt::cmdline();
        let plan = JobPlan::from_cmdline(&cmdline, toro_rt::core_count())
            .unwrap_or_else(|e| fatal(&format!("bad job plan on the command line: {e}")));
        let spin_ns = match setting("mpispin").map(|v| toro_abi::cmdline::parse_u64(&v)) {
            None => 20_000,
            Some(Some(ns)) => ns,
            Some(None) => fatal("mpispin= is not a number"),
        };
        let net = VbusNet::new(Config::new(toro_rt::core_count()), RtMachine, spin_ns)
            .unwrap_or_else(|e| fatal(&format!("intra-vbus: {e}")));
        let spans_vms = plan.locations.iter().any(|l| l.vm != plan.vm);
        let inter = spans_vms.then(|| start_inter_net(&cmdline));
        let net_blocks = match (&inter, setting("netwait").as_deref()) {
            (None, _) => false,
            (Some(_), Some("spin")) => false,
            (Some(inter), None | Some("halt")) => {
                inter.set_waker(wake_rank);
                inter.set_idler(idle_on_network);
                let core = setting("netirq").and_then(|v| v.parse::<usize>().ok());
                inter_net::vm::route_receive_interrupt(
                    |address| toro_rt::virtio::route_interrupt(address, core),
                    || toro_rt::virtio::msi_message(core),
                )
            }
            (Some(_), Some(other)) => fatal(&format!("netwait={other}: expected halt or spin")),
        };
        Job { plan, net: Arc::new(net), inter, net_blocks, spin_ns }
    })
}

/// A tuning key of this crate: `key=` on the kernel command line, else the
/// application environment's `TORO_KEY` (`toro-mpirun -x TORO_MPISPIN=5000`).
fn setting(key: &str) -> Option<String> {
    let cmdline = toro_rt::cmdline();
    match cmdline.get(key) {
        Some(value) => Some(String::from(value)),
        None => toro_rt::env_var(&format!("TORO_{}", key.to_ascii_uppercase())),
    }
}

/// A rank reading a message whose rest has not arrived for `idle_us`: spins (yielding
/// to its core's other ranks) for the spin budget, then blocks on the network alone
/// (a message it is reading has to arrive before it can do anything else).
fn idle_on_network(rank: u32, idle_us: u64) {
    let Some(job) = JOB.get() else { return };
    let (Some(net), Some(core)) = (&job.inter, job.plan.core_of.get(rank as usize).copied().flatten()) else { return };
    if !job.net_blocks || idle_us.saturating_mul(1000) < job.spin_ns {
        toro_rt::yield_now();
        core::hint::spin_loop();
        return;
    }
    let wait = NetWait { net: net.clone(), rank };
    if let Some(deadline) = wait.arm() {
        toro_rt::waiters::wait_until(core, deadline);
    }
    wait.disarm();
}

/// The network's waker: a poll found something for `rank`, blocked on its core.
fn wake_rank(rank: u32) {
    if let Some(core) = JOB.get().and_then(|job| job.plan.core_of.get(rank as usize).copied().flatten()) {
        toro_rt::waiters::notify(core);
    }
}

fn start_inter_net(cmdline: &toro_abi::cmdline::Cmdline<'static>) -> Arc<InterNet> {
    let config = inter_net::NetConfig::from_keys(|k| cmdline.get(k))
        .unwrap_or_else(|e| fatal(&format!("inter-net: {e}")));
    use toro_abi::layout::{PCI_BAR_POOL, PCI_BAR_POOL_END, USER_MMIO_BASE, USER_MMIO_END};
    let pci = toro_rt::virtio::pci_ecam().map(|(ecam, last_bus)| inter_net::vm::PciBus {
        ecam,
        last_bus,
        reach: (USER_MMIO_BASE, USER_MMIO_END),
        bar_pool: (PCI_BAR_POOL, PCI_BAR_POOL_END),
    });
    #[allow(unsafe_code)]
    // SAFETY: called once per VM (inside JOB's call_once); the virtio-mmio
    // window and the PCI BAR window (USER_MMIO_BASE..END) are mapped uncached for
    // ring 3, and the kernel mapped the ECAM it reports; the BAR pool lies below
    // where SeaBIOS assigns BARs on q35 (qboot assigns none: the driver places
    // them in the pool; toro_abi::layout); only this code drives
    // the network device (the console claims console devices only).
    let started = unsafe { inter_net::vm::start::<toro_rt::virtio::IdentityHal>(config, pci, clock_us, net_fatal) };
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
        if setting("stats").is_some() {
            let traps = toro_rt::trap_counts();
            let nic = inter_net::vm::exits();
            let node = net.node.lock().stats();
            toro_rt::println!(
                "toro: vm {} stats: {} halts, {} timed halts ({} timer armings), {} IPIs sent, {} NIC notifies, {} other NIC register accesses; {} messages sent, {} received, {} frames sent, {} received",
                job.plan.vm, traps.halts, traps.timed_halts, traps.timer_arms, traps.ipis, nic.notifies, nic.other,
                node.messages_sent, node.messages_received, node.frames_sent, node.frames_received
            );
        }
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
            Some(net) => Box::new(NetPort { inner: inter_net::NetEndpoint::new(net.clone(), rank), waiter: waiter.clone() }),
            None => Box::new(NoInterVm { me: rank, locations: locations.clone() }),
        };
        let network = match &job.inter {
            Some(net) if job.net_blocks => Network::Blocks(NetWait { net: net.clone(), rank }),
            Some(_) => Network::Spins,
            None => Network::None,
        };
        Some(RankSetup {
            environment: Box::new(RankEnv { rank, locations, waiter, network }),
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
    network: Network,
}

/// How a waiting rank treats the network to other VMs.
enum Network {
    /// The job lives in one VM.
    None,
    /// Waiting ranks keep polling the NIC (`netwait=spin`, or no NIC interrupt).
    Spins,
    /// Waiting ranks block on the network too.
    Blocks(NetWait),
}

/// The network as a [`WakeSource`] of one rank (see the crate docs).
pub struct NetWait {
    net: Arc<InterNet>,
    rank: u32,
}

impl WakeSource for NetWait {
    fn arm(&self) -> Option<u64> {
        let limit = toro_rt::now_ns() + NET_WAIT_LIMIT_NS;
        let due_us = self.net.prepare_wait(self.rank)?;
        Some(due_us.saturating_mul(1000).min(limit))
    }
    fn disarm(&self) {
        self.net.finish_wait(self.rank);
    }
}

/// The inter-VM transport of one rank, telling its waiter when something happened
/// (so its next wait starts with the spin budget again).
struct NetPort {
    inner: inter_net::NetEndpoint<inter_net::vm::VmNic<toro_rt::virtio::IdentityHal>>,
    waiter: Rc<RankWaiter<RtMachine>>,
}

impl Transport for NetPort {
    fn start_send(&mut self, header: &Header, payload: &[u8]) -> Result<SendTicket, TransportError> {
        self.waiter.busy();
        self.inner.start_send(header, payload)
    }
    fn send_complete(&mut self, ticket: SendTicket) -> bool {
        let done = self.inner.send_complete(ticket);
        if done {
            self.waiter.busy();
        }
        done
    }
    fn peek(&mut self) -> Option<Header> {
        let found = self.inner.peek();
        if found.is_some() {
            self.waiter.busy();
        }
        found
    }
    fn receive_payload(&mut self, into: &mut [u8]) {
        self.inner.receive_payload(into)
    }
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
        match &self.network {
            Network::None => self.waiter.relax(),
            Network::Spins => {
                self.waiter.yield_now();
                core::hint::spin_loop();
            }
            Network::Blocks(net) => self.waiter.relax_with(Some(net)),
        }
    }
    fn collective_arena(&self, context: u32, group: &[u32]) -> Option<Arc<mpi::environment::Arena>> {
        Some(self.waiter.net().collective_arena(context, group))
    }
    fn block(&self) {
        match &self.network {
            Network::None => self.waiter.block(),
            Network::Spins => self.relax(),
            Network::Blocks(net) => self.waiter.block_with(Some(net)),
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
