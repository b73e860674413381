//! The global allocator: the current core's pool (see pool.rs).

use core::alloc::{GlobalAlloc, Layout};

use crate::pool::Pools;
use crate::sched::current_core;

pub static POOLS: Pools = Pools::new();

struct PerCoreAllocator;

// SAFETY: Pools hands out disjoint blocks and takes them back once.
unsafe impl GlobalAlloc for PerCoreAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        POOLS.alloc(current_core(), layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract is the pool's contract.
        unsafe { POOLS.dealloc(current_core(), ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: PerCoreAllocator = PerCoreAllocator;
