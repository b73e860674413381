//! Ports of the OSU micro-benchmarks (OMB 7.x methodology) written once against
//! the rsmpi-shaped API, compiled both for Toro MPI (`toro-osu`, inside the VM)
//! and for the host against Open MPI / MPICH through the `mpi` crate
//! (`benches/osu/host/rsmpi`).
//!
//! The including crate provides, at its root: the macro `out!` (print one line,
//! like `println!`) and `fn args() -> Vec<String>` (the program's arguments
//! after the program name).
//!
//! Usage: `NAME [-m [MIN:]MAX] [-i ITERS] [-x WARMUP] [-W WINDOW]` where NAME is
//! one of `latency bw bibw barrier bcast reduce allreduce gather scatter
//! allgather alltoall` (an `osu_` prefix is accepted). As in OMB:
//! - sizes are powers of two, 1 B..4 MiB for point-to-point, 1 B..1 MiB for
//!   collectives (reductions on MPI_FLOAT start at 4 B);
//! - iterations/warm-up: latency 10000/100 (1000/10 above 8 KiB), bandwidth
//!   100/10 (20/2 above 8 KiB) with a window of 64, collectives 1000/100
//!   (100/10 above 8 KiB); `-i`/`-x` set both the small and large counts;
//! - collectives: a barrier after each timed call (not timed); each rank's mean
//!   latency is averaged over the ranks (a reduce to rank 0);
//! - output: OMB's header and `%-10d%18.2f` columns, printed by rank 0.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

pub const VERSION: &str = "v7.3";
const LARGE_MESSAGE_SIZE: usize = 8192;
const P2P_MAX: usize = 1 << 22;
const COLL_MAX: usize = 1 << 20;
const FIELD_WIDTH: usize = 18;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bench {
    Latency,
    Bw,
    Bibw,
    Barrier,
    Bcast,
    Reduce,
    Allreduce,
    Gather,
    Scatter,
    Allgather,
    Alltoall,
}

pub const ALL: [Bench; 11] = [
    Bench::Latency,
    Bench::Bw,
    Bench::Bibw,
    Bench::Barrier,
    Bench::Bcast,
    Bench::Reduce,
    Bench::Allreduce,
    Bench::Gather,
    Bench::Scatter,
    Bench::Allgather,
    Bench::Alltoall,
];

impl Bench {
    pub fn name(self) -> &'static str {
        match self {
            Bench::Latency => "latency",
            Bench::Bw => "bw",
            Bench::Bibw => "bibw",
            Bench::Barrier => "barrier",
            Bench::Bcast => "bcast",
            Bench::Reduce => "reduce",
            Bench::Allreduce => "allreduce",
            Bench::Gather => "gather",
            Bench::Scatter => "scatter",
            Bench::Allgather => "allgather",
            Bench::Alltoall => "alltoall",
        }
    }

    pub fn parse(s: &str) -> Option<Bench> {
        let s = s.strip_prefix("osu_").unwrap_or(s);
        ALL.iter().copied().find(|b| b.name() == s)
    }

    fn title(self) -> &'static str {
        match self {
            Bench::Latency => "Latency Test",
            Bench::Bw => "Bandwidth Test",
            Bench::Bibw => "Bi-Directional Bandwidth Test",
            Bench::Barrier => "Barrier Latency Test",
            Bench::Bcast => "Broadcast Latency Test",
            Bench::Reduce => "Reduce Latency Test",
            Bench::Allreduce => "Allreduce Latency Test",
            Bench::Gather => "Gather Latency Test",
            Bench::Scatter => "Scatter Latency Test",
            Bench::Allgather => "Allgather Latency Test",
            Bench::Alltoall => "All-to-All Personalized Exchange Latency Test",
        }
    }

    fn point_to_point(self) -> bool {
        matches!(self, Bench::Latency | Bench::Bw | Bench::Bibw)
    }

    fn reduction(self) -> bool {
        matches!(self, Bench::Reduce | Bench::Allreduce)
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub bench: Bench,
    pub min: usize,
    pub max: usize,
    /// (small, large) iteration counts.
    pub iterations: (usize, usize),
    /// (small, large) warm-up counts.
    pub skip: (usize, usize),
    pub window: usize,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let name = args.first().ok_or_else(|| String::from("missing benchmark name"))?;
        let bench = Bench::parse(name).ok_or_else(|| alloc::format!("unknown benchmark {name:?}"))?;
        let (iterations, skip) = match bench {
            Bench::Latency => ((10000, 1000), (100, 10)),
            Bench::Bw | Bench::Bibw => ((100, 20), (10, 2)),
            _ => ((1000, 100), (100, 10)),
        };
        let min = if bench.reduction() { 4 } else { 1 };
        let max = if bench.point_to_point() { P2P_MAX } else { COLL_MAX };
        let mut o = Options { bench, min, max, iterations, skip, window: 64 };
        let mut it = args[1..].iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| alloc::format!("{flag} needs a value"))?;
            let number = |v: &str| v.parse::<usize>().map_err(|_| alloc::format!("bad value {v:?} for {flag}"));
            match flag.as_str() {
                "-m" => match value.split_once(':') {
                    Some((lo, hi)) => {
                        o.min = number(lo)?.max(o.min);
                        o.max = number(hi)?;
                    }
                    None => o.max = number(value)?,
                },
                "-i" => {
                    let n = number(value)?;
                    o.iterations = (n, n);
                }
                "-x" => {
                    let n = number(value)?;
                    o.skip = (n, n);
                }
                "-W" => o.window = number(value)?.max(1),
                _ => return Err(alloc::format!("unknown option {flag}")),
            }
        }
        if o.iterations.0 == 0 || o.min > o.max {
            return Err(String::from("need -i >= 1 and MIN <= MAX"));
        }
        Ok(o)
    }

    fn counts(&self, size: usize) -> (usize, usize) {
        if size > LARGE_MESSAGE_SIZE {
            (self.iterations.1, self.skip.1)
        } else {
            (self.iterations.0, self.skip.0)
        }
    }

    fn sizes(&self) -> Vec<usize> {
        let mut v = Vec::new();
        let mut s = 1usize;
        while s <= self.max {
            if s >= self.min {
                v.push(s);
            }
            s *= 2;
        }
        v
    }
}

/// Runs one benchmark on `world`; returns the exit status (0, or 1 on a usage
/// error, reported by rank 0).
pub fn run(world: &SimpleCommunicator, args: &[String]) -> i32 {
    let rank = world.rank();
    let options = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            if rank == 0 {
                out!("osu: {e}");
                out!("usage: NAME [-m [MIN:]MAX] [-i ITERS] [-x WARMUP] [-W WINDOW]; NAME = latency bw bibw barrier bcast reduce allreduce gather scatter allgather alltoall");
            }
            return 1;
        }
    };
    if options.bench.point_to_point() && world.size() != 2 {
        if rank == 0 {
            out!("# OSU MPI {} {VERSION}", options.bench.title());
            out!("This test requires exactly two processes");
        }
        return 1;
    }
    if rank == 0 {
        header(&options);
    }
    match options.bench {
        Bench::Latency => latency(world, &options),
        Bench::Bw => bandwidth(world, &options, false),
        Bench::Bibw => bandwidth(world, &options, true),
        Bench::Barrier => barrier(world, &options),
        _ => collective(world, &options),
    }
    0
}

fn header(o: &Options) {
    out!("# OSU MPI {} {VERSION}", o.bench.title());
    match o.bench {
        Bench::Barrier => {
            out!("# Avg Latency(us)");
            return;
        }
        Bench::Reduce | Bench::Allreduce => out!("# Datatype: MPI_FLOAT."),
        _ => out!("# Datatype: MPI_CHAR."),
    }
    let column = match o.bench {
        Bench::Bw | Bench::Bibw => "Bandwidth (MB/s)",
        _ => "Avg Latency(us)",
    };
    out!("{:<10}{:>w$}", "# Size", column, w = FIELD_WIDTH);
}

fn row(size: usize, value: f64) {
    out!("{:<10}{:>w$.2}", size, value, w = FIELD_WIDTH);
}

fn latency(world: &SimpleCommunicator, o: &Options) {
    let rank = world.rank();
    let peer = world.process_at_rank(1 - rank);
    let mut s_buf = vec![b'a'; o.max];
    let mut r_buf = vec![b'b'; o.max];
    for size in o.sizes() {
        let (iterations, skip) = o.counts(size);
        world.barrier();
        let mut start = 0.0;
        for i in 0..iterations + skip {
            if i == skip {
                start = mpi::time();
            }
            if rank == 0 {
                peer.send(&s_buf[..size]);
                peer.receive_into(&mut r_buf[..size]);
            } else {
                peer.receive_into(&mut r_buf[..size]);
                peer.send(&s_buf[..size]);
            }
        }
        let elapsed = mpi::time() - start;
        if rank == 0 {
            row(size, elapsed * 1e6 / (2.0 * iterations as f64));
        }
        s_buf[0] = s_buf[0].wrapping_add(1);
    }
}

/// `osu_bw` (one direction, rank 0 → 1, then a 4-byte acknowledgement) and
/// `osu_bibw` (both directions at once): `window` non-blocking operations in
/// flight per iteration, MB/s = 10^6 bytes per second.
fn bandwidth(world: &SimpleCommunicator, o: &Options, both: bool) {
    let rank = world.rank();
    let peer = world.process_at_rank(1 - rank);
    let s_buf = vec![b'a'; o.max];
    let mut r_buf = vec![b'b'; o.max];
    let mut ack = [0u8; 4];
    for size in o.sizes() {
        let (iterations, skip) = o.counts(size);
        world.barrier();
        let mut start = 0.0;
        for i in 0..iterations + skip {
            if i == skip {
                start = mpi::time();
            }
            let sends = rank == 0 || both;
            let receives = rank == 1 || both;
            let r_ptr = r_buf.as_mut_ptr();
            mpi::request::scope(|scope| {
                let mut requests = Vec::with_capacity(2 * o.window);
                if receives {
                    for _ in 0..o.window {
                        // SAFETY: as in OMB, every receive of the window lands in the
                        // same buffer; its contents are never read by this program,
                        // and the buffer outlives the scope (all requests are waited
                        // for below, before r_buf is touched again).
                        let slot: &mut [u8] = unsafe { core::slice::from_raw_parts_mut(r_ptr, size) };
                        requests.push(peer.immediate_receive_into(scope, slot));
                    }
                }
                if sends {
                    for _ in 0..o.window {
                        requests.push(peer.immediate_send(scope, &s_buf[..size]));
                    }
                }
                for request in requests {
                    request.wait();
                }
            });
            if !both {
                if rank == 0 {
                    peer.receive_into(&mut ack[..]);
                } else {
                    peer.send(&ack[..]);
                }
            }
        }
        let elapsed = mpi::time() - start;
        if rank == 0 {
            let bytes = size as f64 * iterations as f64 * o.window as f64 * if both { 2.0 } else { 1.0 };
            row(size, bytes / 1e6 / elapsed);
        }
    }
    let _ = &mut r_buf;
}

fn barrier(world: &SimpleCommunicator, o: &Options) {
    let (iterations, skip) = o.counts(0);
    let mut total = 0.0;
    for i in 0..iterations + skip {
        let start = mpi::time();
        world.barrier();
        if i >= skip {
            total += mpi::time() - start;
        }
    }
    let mine = total * 1e6 / iterations as f64;
    let average = average_over_ranks(world, mine);
    if world.rank() == 0 {
        out!("{:>w$.2}", average, w = FIELD_WIDTH - 1);
    }
}

fn average_over_ranks(world: &SimpleCommunicator, mine: f64) -> f64 {
    let root = world.process_at_rank(0);
    if world.rank() == 0 {
        let mut sum = 0.0f64;
        root.reduce_into_root(&mine, &mut sum, SystemOperation::sum());
        sum / world.size() as f64
    } else {
        root.reduce_into(&mine, SystemOperation::sum());
        0.0
    }
}

fn collective(world: &SimpleCommunicator, o: &Options) {
    let rank = world.rank();
    let n = world.size() as usize;
    let is_root = rank == 0;
    let root = world.process_at_rank(0);
    // Buffers as in OMB: the per-rank message size times the world for the
    // rooted/all sides that need it.
    let (send_len, recv_len) = match o.bench {
        Bench::Bcast => (o.max, 0),
        Bench::Reduce | Bench::Allreduce => (o.max / 4, o.max / 4),
        Bench::Gather => (o.max, if is_root { o.max * n } else { 0 }),
        Bench::Scatter => (if is_root { o.max * n } else { 0 }, o.max),
        Bench::Allgather => (o.max, o.max * n),
        Bench::Alltoall => (o.max * n, o.max * n),
        _ => unreachable!(),
    };
    let mut bytes_s = vec![1u8; send_len];
    let mut bytes_r = vec![0u8; recv_len];
    let floats_s = if o.bench.reduction() { vec![1.0f32; send_len] } else { Vec::new() };
    let mut floats_r = if o.bench.reduction() { vec![0.0f32; recv_len] } else { Vec::new() };
    if o.bench.reduction() {
        bytes_s = Vec::new();
        bytes_r = Vec::new();
    }
    for size in o.sizes() {
        let (iterations, skip) = o.counts(size);
        let count = size / 4;
        world.barrier();
        let mut total = 0.0;
        for i in 0..iterations + skip {
            let start = mpi::time();
            match o.bench {
                Bench::Bcast => root.broadcast_into(&mut bytes_s[..size]),
                Bench::Reduce => {
                    if is_root {
                        root.reduce_into_root(&floats_s[..count], &mut floats_r[..count], SystemOperation::sum())
                    } else {
                        root.reduce_into(&floats_s[..count], SystemOperation::sum())
                    }
                }
                Bench::Allreduce => {
                    world.all_reduce_into(&floats_s[..count], &mut floats_r[..count], SystemOperation::sum())
                }
                Bench::Gather => {
                    if is_root {
                        root.gather_into_root(&bytes_s[..size], &mut bytes_r[..size * n])
                    } else {
                        root.gather_into(&bytes_s[..size])
                    }
                }
                Bench::Scatter => {
                    if is_root {
                        root.scatter_into_root(&bytes_s[..size * n], &mut bytes_r[..size])
                    } else {
                        root.scatter_into(&mut bytes_r[..size])
                    }
                }
                Bench::Allgather => world.all_gather_into(&bytes_s[..size], &mut bytes_r[..size * n]),
                Bench::Alltoall => world.all_to_all_into(&bytes_s[..size * n], &mut bytes_r[..size * n]),
                _ => unreachable!(),
            }
            if i >= skip {
                total += mpi::time() - start;
            }
            world.barrier();
        }
        let mine = total * 1e6 / iterations as f64;
        let average = average_over_ranks(world, mine);
        if is_root {
            row(size, average);
        }
    }
}
