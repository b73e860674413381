//! Heat equation by Jacobi iteration on an N×N grid (fixed boundary: 100 on
//! the top edge, 0 elsewhere). Rows are split in blocks between the ranks;
//! every iteration exchanges halo rows with the neighbours. At the end rank 0
//! gathers the grid and compares it with a sequential run of the same problem
//! (bit for bit: each point is computed by the same expression). Prints
//! `jacobi: PASS` / `jacobi: FAIL`. Arguments: `-- [N [ITERATIONS]]`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::traits::*;
use mpi::Count;
use toro::println;

toro::main!(main);

fn boundary(row: usize, n: usize) -> f64 {
    if row == 0 { 100.0 } else if row == n + 1 { 0.0 } else { 0.0 }
}

/// One Jacobi sweep over `rows` interior rows of width n+2 (with a halo row above and below).
fn sweep(old: &[f64], new: &mut [f64], rows: usize, w: usize) -> f64 {
    let mut diff = 0.0f64;
    for r in 1..=rows {
        for c in 1..w - 1 {
            let v = 0.25 * (old[(r - 1) * w + c] + old[(r + 1) * w + c] + old[r * w + c - 1] + old[r * w + c + 1]);
            let d = v - old[r * w + c];
            diff += d * d;
            new[r * w + c] = v;
        }
    }
    diff
}

fn main() -> i32 {
    let universe = mpi::initialize().expect("MPI initialize");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let args = toro::rt::args();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(64);
    let iterations: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let w = n + 2;
    // Rows [first, first + rows) of the interior (1-based grid rows).
    let share = |r: usize| (n * r / size, n * (r + 1) / size);
    let (lo, hi) = share(rank);
    let rows = hi - lo;
    let mut old = vec![0.0f64; (rows + 2) * w];
    for r in 0..rows + 2 {
        let global = lo + r; // grid row of local row r
        if global == 0 || global == n + 1 {
            for c in 0..w {
                old[r * w + c] = boundary(global, n);
            }
        }
    }
    let mut new = old.clone();
    let up = (rank > 0).then(|| world.process_at_rank(rank as i32 - 1));
    let down = (rank + 1 < size).then(|| world.process_at_rank(rank as i32 + 1));
    let start = mpi::time();
    let mut residual = 0.0;
    for _ in 0..iterations {
        // Halo exchange: my first interior row goes up, my last goes down.
        mpi::request::scope(|scope| {
            let mut requests = Vec::new();
            let (top, rest) = old.split_at_mut(w);
            let (middle, bottom) = rest.split_at_mut(rows * w);
            if let Some(up) = &up {
                requests.push(up.immediate_receive_into_with_tag(scope, top, 1));
                requests.push(up.immediate_send_with_tag(scope, &middle[..w], 2));
            }
            if let Some(down) = &down {
                requests.push(down.immediate_receive_into_with_tag(scope, bottom, 2));
                requests.push(down.immediate_send_with_tag(scope, &middle[(rows - 1) * w..], 1));
            }
            mpi::request::wait_all(requests);
        });
        let local = if rows > 0 { sweep(&old, &mut new, rows, w) } else { 0.0 };
        world.all_reduce_into(&local, &mut residual, SystemOperation::sum());
        core::mem::swap(&mut old, &mut new);
    }
    let elapsed = mpi::time() - start;
    // Gather the interior rows on rank 0.
    let counts: Vec<Count> = (0..size).map(|r| ((share(r).1 - share(r).0) * w) as Count).collect();
    let displs: Vec<Count> = (0..size).map(|r| (share(r).0 * w) as Count).collect();
    let mine = &old[w..(rows + 1) * w];
    let root = world.process_at_rank(0);
    if rank != 0 {
        root.gather_varcount_into(mine);
        return 0;
    }
    let mut grid = vec![0.0f64; n * w];
    root.gather_varcount_into_root(mine, &mut PartitionMut::new(&mut grid[..], counts, displs));
    // The sequential run of the same problem.
    let mut a = vec![0.0f64; w * w];
    for c in 0..w {
        a[c] = boundary(0, n);
        a[(n + 1) * w + c] = boundary(n + 1, n);
    }
    let mut b = a.clone();
    let mut seq_residual = 0.0;
    for _ in 0..iterations {
        seq_residual = sweep(&a, &mut b, n, w);
        core::mem::swap(&mut a, &mut b);
    }
    let mut max_diff = 0.0f64;
    let mut identical = true;
    for r in 0..n {
        for c in 0..w {
            let (x, y) = (grid[r * w + c], a[(r + 1) * w + c]);
            identical &= x.to_bits() == y.to_bits();
            max_diff = max_diff.max((x - y).abs());
        }
    }
    let residual_ok = (residual - seq_residual).abs() <= 1e-9 * seq_residual.abs().max(1.0);
    let ok = identical && residual_ok;
    let centre = a[(n / 2 + 1) * w + w / 2];
    println!(
        "jacobi: {n}x{n} grid, {size} ranks, {iterations} iterations, centre {centre:.9}, residual {residual:.6e} (sequential {seq_residual:.6e}), max diff {max_diff:e}, {:.1} ms: {}",
        elapsed * 1e3,
        if ok { "PASS" } else { "FAIL" }
    );
    if ok { 0 } else { 1 }
}
