//! The MPI layer over inter-net: ranks in two or three "VMs" (thread groups, one smoltcp
//! node each, on an in-memory segment that reorders frames), the same-VM peers over
//! `mpi::testing`'s in-memory transport. Point-to-point with data checks, large
//! messages, synchronous sends and collectives across VMs.

use std::cell::RefCell;
use std::sync::{mpsc, Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use inter_net::sim::{Segment, SimPort};
use inter_net::{NetConfig, NetEndpoint, Node, Shared};
use mpi::collective::SystemOperation;
use mpi::environment::{self, Environment, Location, Platform, RankSetup};
use mpi::router::{Reach, RouteTable};
use mpi::testing::{MemoryEndpoint, MemoryFabric};
use mpi::traits::*;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// The nodes' clock: real time, 20× faster (TCP's 1 s minimum RTO costs 50 ms).
fn clock_us() -> u64 {
    start().elapsed().as_micros() as u64 * 20
}

fn fatal(message: &str) -> ! {
    panic!("{}", message)
}

struct Env {
    rank: u32,
    locations: Vec<Location>,
}

impl Environment for Env {
    fn world_rank(&self) -> u32 {
        self.rank
    }
    fn locations(&self) -> &[Location] {
        &self.locations
    }
    fn now_ns(&self) -> u64 {
        start().elapsed().as_nanos() as u64
    }
    fn relax(&self) {
        std::thread::yield_now();
    }
    fn abort(&self, status: i32, message: &str) -> ! {
        panic!("MPI job aborted (status {}): {}", status, message)
    }
}

std::thread_local! {
    static SETUP: RefCell<Option<RankSetup>> = const { RefCell::new(None) };
}

struct TestPlatform;

impl Platform for TestPlatform {
    fn setup_current_rank(&self) -> Option<RankSetup> {
        SETUP.with(|slot| slot.borrow_mut().take())
    }
    fn now_ns(&self) -> u64 {
        start().elapsed().as_nanos() as u64
    }
}

static PLATFORM: TestPlatform = TestPlatform;

/// Runs `rank_main` on `vms × per_vm` rank threads; returns results by rank.
fn run<R: Send + 'static>(vms: u32, per_vm: u32, rank_main: impl Fn(mpi::environment::Universe) -> R + Send + Sync + 'static) -> Vec<R> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        environment::install(&PLATFORM);
    });
    let world = vms * per_vm;
    let vm_of_rank: Vec<u32> = (0..world).map(|r| r / per_vm).collect();
    let locations: Vec<Location> = (0..world).map(|r| Location { vm: r / per_vm, core: r % per_vm }).collect();
    let segment = Segment::new(20, 99);
    let shared: Vec<Arc<Shared<SimPort>>> = (0..vms)
        .map(|vm| {
            let mac = [2, 0x74, 0x6f, 0, 0, vm as u8];
            let mut config = NetConfig::new(vm, vm_of_rank.clone(), mac, [169, 254, 1, 1]);
            config.peer_timeout_ms = 60_000;
            Shared::new(Node::new(config, segment.attach(mac), clock_us), fatal)
        })
        .collect();
    let fabric = MemoryFabric::new(world as usize, usize::MAX);
    let rank_main = Arc::new(rank_main);
    let (done, results) = mpsc::channel();
    for rank in 0..world {
        let (rank_main, done) = (rank_main.clone(), done.clone());
        let (locations, fabric, node) = (locations.clone(), fabric.clone(), shared[(rank / per_vm) as usize].clone());
        std::thread::spawn(move || {
            let setup = RankSetup {
                environment: Box::new(Env { rank, locations }),
                transports: vec![Box::new(MemoryEndpoint::new(fabric, rank)), NetEndpoint::boxed(node, rank)],
                routes: RouteTable::loopback_only().with(Reach::SameVm, 0).with(Reach::OtherVm, 1),
            };
            SETUP.with(|slot| *slot.borrow_mut() = Some(setup));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rank_main(mpi::initialize().expect("rank setup"))));
            let _ = done.send((rank, outcome.map_err(|e| e.downcast_ref::<String>().cloned().unwrap_or_default())));
        });
    }
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut out: Vec<Option<R>> = (0..world).map(|_| None).collect();
    for _ in 0..world {
        let left = deadline.saturating_duration_since(Instant::now());
        let (rank, outcome) = results.recv_timeout(left).expect("job timed out");
        out[rank as usize] = Some(outcome.unwrap_or_else(|message| panic!("rank {} failed: {}", rank, message)));
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn data(from: i32, to: i32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| i.wrapping_mul(2_654_435_761) ^ (from as u32) << 24 ^ (to as u32) << 16).collect()
}

#[test]
fn point_to_point_across_vms() {
    run(2, 2, |universe| {
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        // Each rank exchanges with both ranks of the other VM, small to large.
        for len in [0usize, 2, 256, 25_000, 800_000] {
            let peers: Vec<i32> = (0..size).filter(|&p| p / 2 != rank / 2).collect();
            for &peer in &peers {
                let process = world.process_at_rank(peer);
                let mine = data(rank, peer, len);
                let mut theirs = vec![0u32; len];
                mpi::request::scope(|scope| {
                    let send = process.immediate_send(scope, &mine[..]);
                    let receive = process.immediate_receive_into(scope, &mut theirs[..]);
                    receive.wait();
                    send.wait();
                });
                assert_eq!(theirs, data(peer, rank, len), "rank {} from {} ({} words)", rank, peer, len);
            }
        }
        // Synchronous sends and tags, in order, rank r → r+2.
        if rank < 2 {
            for i in 0..20u64 {
                world.process_at_rank(rank + 2).synchronous_send_with_tag(&(i * 3), (i % 4) as i32);
            }
        } else {
            for i in 0..20u64 {
                let (value, status) = world.process_at_rank(rank - 2).receive::<u64>();
                assert_eq!((value, status.tag()), (i * 3, (i % 4) as i32));
            }
        }
    });
}

#[test]
fn collectives_across_vms() {
    let results = run(2, 2, |universe| {
        let world = universe.world();
        let rank = world.rank();
        let mut sum = 0i64;
        world.all_reduce_into(&(rank as i64 + 1), &mut sum, SystemOperation::sum());
        let mut big = if rank == 3 { data(3, 0, 300_000) } else { vec![0u32; 300_000] };
        world.process_at_rank(3).broadcast_into(&mut big[..]);
        assert_eq!(big, data(3, 0, 300_000));
        let mut all = vec![0i32; 4];
        world.all_gather_into(&(rank * 10), &mut all[..]);
        world.barrier();
        (sum, all)
    });
    for (sum, all) in results {
        assert_eq!(sum, 10);
        assert_eq!(all, vec![0, 10, 20, 30]);
    }
}

#[test]
fn three_vms_ring_and_reduce() {
    let results = run(3, 2, |universe| {
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let next = world.process_at_rank((rank + 2) % size);
        let previous = world.process_at_rank((rank + size - 2) % size);
        let payload = data(rank, 0, 70_000);
        let (got, _) = mpi::request::scope(|scope| {
            let send = next.immediate_send(scope, &payload[..]);
            let got = previous.receive_vec::<u32>();
            send.wait();
            got
        });
        assert_eq!(got, data((rank + size - 2) % size, 0, 70_000));
        let mut max = 0i32;
        world.all_reduce_into(&rank, &mut max, SystemOperation::max());
        max
    });
    assert_eq!(results, vec![5; 6]);
}
