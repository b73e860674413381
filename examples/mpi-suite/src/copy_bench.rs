//! The rendezvous copy in a VM, without the bus: a plain `copy_from_slice`,
//! `intra_vbus::copy_streamed` (non-temporal stores whatever the size) and
//! `intra_vbus::copy_payload` (what the bus does: streamed past the L2, see
//! `intra_vbus::stream_from`), into one destination copied again and again (it
//! stays in cache) and into 32 destinations in turn (32 MiB at 1 MiB). One line
//! per case, GB/s. Arguments: `-- [SIZE_KIB [COPIES]]` (defaults 1024 and 300).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use core::hint::black_box;
use toro::println;

toro::main!(main);

fn main() -> i32 {
    let args = toro::rt::args();
    let size = args.first().and_then(|a| a.parse::<usize>().ok()).unwrap_or(1024) << 10;
    let copies: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let source = vec![1u8; size];
    let mut destinations = vec![2u8; size * 32];
    println!("copy: copy_payload streams copies of {} bytes and more", intra_vbus::stream_from());
    type Copy = fn(&[u8], &mut [u8]);
    let plain: Copy = |from, to| to.copy_from_slice(from);
    let kinds: [(&str, Copy); 3] =
        [("copy_from_slice", plain), ("copy_streamed", intra_vbus::copy_streamed), ("copy_payload", intra_vbus::copy_payload)];
    for buffers in [1usize, 32] {
        for (name, copy) in kinds {
            let start = toro::rt::time::now_ns();
            for i in 0..copies {
                let to = &mut destinations[(i % buffers) * size..][..size];
                copy(black_box(&source), black_box(to));
            }
            let ns = (toro::rt::time::now_ns() - start).max(1);
            println!("copy: {} KiB into {} buffer(s), {}: {:.2} GB/s", size >> 10, buffers, name, (copies * size) as f64 / ns as f64);
        }
    }
    0
}
