//! Per-core memory pools. Each core allocates from its own pool; a block
//! freed on another core is pushed onto its owner's lock-free list and
//! returned to the owner's free lists the next time the pool is taken (an
//! allocation, a borrow by another core, `free_bytes`).
//!
//! Blocks of up to [`CLASS_MAX`] bytes come from free lists by size class
//! (powers of two from 16 bytes) in front of the linked-list heap: the heap's
//! first fit and its sorted free list walk every hole on each call, and the
//! MPI layer allocates and frees a small buffer per message (a message for
//! another rank of the core, one that arrived before its receive was posted,
//! one between two ranks of a core). A class block, once carved from the
//! heap, stays in its class until the heap runs dry (or the class lists hold
//! [`CACHED_MAX`]); then every cached block goes back to the heap (which
//! merges neighbours) before the allocation is tried again, or on another
//! core's pool.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use linked_list_allocator::Heap;
use spin::Mutex;
use toro_abi::MAX_CPUS;

/// What a remotely freed block holds while it waits for its owner.
/// Every block the allocator hands out has room for it (its minimum is 16 bytes).
/// Size and alignment fit 32 bits: a pool is a part of at most 3 GiB of RAM.
#[repr(C)]
struct RemoteFree {
    next: *mut RemoteFree,
    size: u32,
    align: u32,
}

/// The smallest class: room for a [`RemoteFree`] and the heap's own minimum.
const CLASS_MIN: usize = 16;
/// Larger blocks come from the heap directly.
const CLASS_MAX: usize = 4096;
const CLASSES: usize = (CLASS_MAX / CLASS_MIN).trailing_zeros() as usize + 1;

/// Class blocks are aligned to their size up to this, so carving one from the
/// heap leaves at most a small hole in front of it.
const CLASS_ALIGN_MAX: usize = 64;
/// Past this many bytes in a pool's class lists, a freed small block goes back
/// to the heap: bounds what the class lists hold and what a flush walks.
const CACHED_MAX: usize = 4 << 20;

/// The size class of `layout`: its size and alignment rounded up to a power
/// of two, at least [`CLASS_MIN`]; `None` above [`CLASS_MAX`] or for an
/// alignment above [`CLASS_ALIGN_MAX`] (those come from the heap as they are).
/// A class block is aligned to its size up to [`CLASS_ALIGN_MAX`], so it
/// serves any layout of its class.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > CLASS_ALIGN_MAX {
        return None;
    }
    let bytes = layout.size().max(layout.align()).max(CLASS_MIN).next_power_of_two();
    (bytes <= CLASS_MAX).then(|| (bytes / CLASS_MIN).trailing_zeros() as usize)
}

fn class_layout(class: usize) -> Layout {
    let bytes = CLASS_MIN << class;
    // A power of two up to 4096, aligned to at most 64: always valid.
    Layout::from_size_align(bytes, bytes.min(CLASS_ALIGN_MAX)).expect("class layout")
}

/// A cached block of a class: the link to the next one lives in the block.
struct FreeBlock {
    next: *mut FreeBlock,
}

struct PoolState {
    heap: Heap,
    /// Per class, the first free block (null: none).
    classes: [*mut FreeBlock; CLASSES],
    /// Bytes held in the class lists (free, but not in the heap).
    cached: usize,
}

// SAFETY: the class lists point into this pool's own memory and are only
// touched under the pool's lock.
unsafe impl Send for PoolState {}

impl PoolState {
    /// Takes a block for `layout` off its class list or carves one from the heap.
    fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let class = class_of(layout);
        if let Some(class) = class {
            let head = self.classes[class];
            if !head.is_null() {
                // SAFETY: every block on a class list is a free block of this pool
                // with a FreeBlock written into it by `free`.
                self.classes[class] = unsafe { (*head).next };
                self.cached -= CLASS_MIN << class;
                return head.cast();
            }
        }
        let carve = class.map_or(layout, class_layout);
        self.heap.allocate_first_fit(carve).map_or(ptr::null_mut(), |p| p.as_ptr())
    }

    /// # Safety
    /// `ptr` came from `alloc` of this pool with `layout` and is not used any more.
    unsafe fn free(&mut self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(class) if self.cached < CACHED_MAX => {
                let block = ptr.cast::<FreeBlock>();
                // SAFETY: the block is free and at least CLASS_MIN bytes, aligned to
                // at least 16: room for the link.
                unsafe { block.write(FreeBlock { next: self.classes[class] }) };
                self.classes[class] = block;
                self.cached += CLASS_MIN << class;
            }
            // SAFETY: the caller's guarantee; `alloc` carved the block from the heap
            // with this very layout (its class's, or the request's own).
            class => unsafe { self.heap.deallocate(NonNull::new_unchecked(ptr), class.map_or(layout, class_layout)) },
        }
    }

    /// Gives every cached class block back to the heap. True if there was any.
    fn flush_classes(&mut self) -> bool {
        let any = self.cached != 0;
        for class in 0..CLASSES {
            let mut block = core::mem::replace(&mut self.classes[class], ptr::null_mut());
            while let Some(b) = NonNull::new(block) {
                // SAFETY: a free block of this class, carved from the heap with the
                // class layout.
                unsafe {
                    block = b.as_ref().next;
                    self.heap.deallocate(b.cast(), class_layout(class));
                }
            }
        }
        self.cached = 0;
        any
    }
}

pub struct CorePool {
    /// Taken by the owner core only, except when another core's pool ran dry.
    state: Mutex<PoolState>,
    remote: AtomicPtr<RemoteFree>,
}

impl CorePool {
    const fn empty() -> Self {
        CorePool {
            state: Mutex::new(PoolState { heap: Heap::empty(), classes: [ptr::null_mut(); CLASSES], cached: 0 }),
            remote: AtomicPtr::new(ptr::null_mut()),
        }
    }

    fn drain_remote(&self, state: &mut PoolState) {
        if self.remote.load(Ordering::Relaxed).is_null() {
            return;
        }
        let mut block = self.remote.swap(ptr::null_mut(), Ordering::Acquire);
        while let Some(b) = NonNull::new(block) {
            // SAFETY: every block on the list was allocated from this pool and
            // handed over by free_remote, which wrote a RemoteFree into it.
            unsafe {
                let RemoteFree { next, size, align } = b.as_ptr().read();
                state.free(b.as_ptr().cast(), Layout::from_size_align_unchecked(size as usize, align as usize));
                block = next;
            }
        }
    }

    fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut state = self.state.lock();
        self.drain_remote(&mut state);
        let p = state.alloc(layout);
        if p.is_null() && state.flush_classes() {
            return state.alloc(layout);
        }
        p
    }

    /// # Safety
    /// `ptr` came from this pool with `layout` and is not used any more.
    unsafe fn free_local(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.state.lock().free(ptr, layout) };
    }

    /// # Safety
    /// As for `free_local`; the block must be at least 16 bytes (the allocator's minimum).
    unsafe fn free_remote(&self, ptr: *mut u8, layout: Layout) {
        let block = ptr.cast::<RemoteFree>();
        let mut head = self.remote.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is ours until the push below publishes it.
            unsafe { block.write(RemoteFree { next: head, size: layout.size() as u32, align: layout.align() as u32 }) };
            match self.remote.compare_exchange_weak(head, block, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    fn free_bytes(&self) -> usize {
        let mut state = self.state.lock();
        self.drain_remote(&mut state);
        state.heap.free() + state.cached
    }
}

/// The pools of every core over one region of memory, cut in equal parts.
pub struct Pools {
    pools: [CorePool; MAX_CPUS],
    start: AtomicUsize,
    part: AtomicUsize,
    count: AtomicUsize,
}

impl Pools {
    pub const fn new() -> Self {
        Pools { pools: [const { CorePool::empty() }; MAX_CPUS], start: AtomicUsize::new(0), part: AtomicUsize::new(0), count: AtomicUsize::new(0) }
    }

    /// Cuts `[start, end)` into `cores` page-aligned pools.
    ///
    /// # Safety
    /// The region is unused memory owned by these pools from now on; call once.
    pub unsafe fn init(&self, start: usize, end: usize, cores: usize) {
        let cores = cores.clamp(1, MAX_CPUS);
        let part = ((end - start) / cores) & !0xfff;
        for (i, pool) in self.pools[..cores].iter().enumerate() {
            // SAFETY: the parts are disjoint pieces of the region the caller gave us.
            unsafe { pool.state.lock().heap.init((start + i * part) as *mut u8, part) };
        }
        self.start.store(start, Ordering::Relaxed);
        self.part.store(part, Ordering::Relaxed);
        self.count.store(cores, Ordering::Release);
    }

    pub fn cores(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The memory of `core`'s pool.
    pub fn region(&self, core: usize) -> (usize, usize) {
        let part = self.part.load(Ordering::Relaxed);
        let start = self.start.load(Ordering::Relaxed) + core * part;
        (start, start + part)
    }

    pub fn owner(&self, addr: usize) -> Option<usize> {
        let start = self.start.load(Ordering::Relaxed);
        let part = self.part.load(Ordering::Relaxed);
        let i = addr.checked_sub(start)? / part.max(1);
        (i < self.cores()).then_some(i)
    }

    /// Allocates on `core`'s pool, or on another's when that one is full.
    pub fn alloc(&self, core: usize, layout: Layout) -> *mut u8 {
        let n = self.cores();
        if n == 0 {
            return ptr::null_mut();
        }
        (0..n)
            .map(|k| self.pools[(core + k) % n].alloc(layout))
            .find(|p| !p.is_null())
            .unwrap_or(ptr::null_mut())
    }

    /// # Safety
    /// `ptr` came from `alloc` with `layout` and is not used any more.
    pub unsafe fn dealloc(&self, core: usize, ptr: *mut u8, layout: Layout) {
        let Some(owner) = self.owner(ptr as usize) else { return };
        // SAFETY: the caller's guarantee, forwarded.
        unsafe {
            if owner == core {
                self.pools[owner].free_local(ptr, layout)
            } else {
                self.pools[owner].free_remote(ptr, layout)
            }
        }
    }

    /// Free bytes of `core`'s pool, blocks freed elsewhere counted back in.
    pub fn free_bytes(&self, core: usize) -> usize {
        self.pools[core].free_bytes()
    }
}

impl Default for Pools {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Region {
        pools: Pools,
        _mem: Vec<u64>,
    }

    fn region(bytes: usize, cores: usize) -> Arc<Region> {
        let mem = vec![0u64; bytes / 8 + 512];
        let start = (mem.as_ptr() as usize + 4095) & !4095;
        let pools = Pools::new();
        // SAFETY: the Vec outlives the pools (both live in Region) and is used by nothing else.
        unsafe { pools.init(start, start + bytes, cores) };
        Arc::new(Region { pools, _mem: mem })
    }

    #[test]
    fn split_and_owner() {
        let r = region(1 << 20, 4);
        let (s0, e0) = r.pools.region(0);
        let (s3, e3) = r.pools.region(3);
        assert_eq!(e0 - s0, 256 << 10);
        assert_eq!(r.pools.owner(s0), Some(0));
        assert_eq!(r.pools.owner(e0), Some(1));
        assert_eq!(r.pools.owner(e3 - 1), Some(3));
        assert_eq!(r.pools.owner(e3), None);
        assert_eq!(r.pools.owner(s0 - 1), None);
        assert!(s3 > s0);
    }

    #[test]
    fn local_alloc_free_returns_every_byte() {
        let r = region(1 << 20, 2);
        let before = r.pools.free_bytes(0);
        let layouts = [Layout::from_size_align(1, 1).unwrap(), Layout::from_size_align(100, 64).unwrap(),
                       Layout::from_size_align(4096, 4096).unwrap()];
        let ptrs: Vec<_> = layouts.iter().map(|l| (r.pools.alloc(0, *l), *l)).collect();
        for (p, l) in &ptrs {
            assert!(!p.is_null());
            assert_eq!(*p as usize % l.align(), 0);
            assert_eq!(r.pools.owner(*p as usize), Some(0));
        }
        assert!(r.pools.free_bytes(0) < before);
        for (p, l) in ptrs {
            // SAFETY: allocated above with this layout.
            unsafe { r.pools.dealloc(0, p, l) };
        }
        assert_eq!(r.pools.free_bytes(0), before);
    }

    #[test]
    fn cross_core_frees_from_threads_come_home() {
        let r = region(4 << 20, 2);
        let before = [r.pools.free_bytes(0), r.pools.free_bytes(1)];
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, usize)>(64);
        let r0 = r.clone();
        // "Core 0" allocates, "core 1" frees: 20,000 pairs of assorted sizes.
        let producer = std::thread::spawn(move || {
            for i in 0..20_000usize {
                let size = 1 + (i * 37) % 700;
                let p = r0.pools.alloc(0, Layout::from_size_align(size, 8).unwrap());
                assert!(!p.is_null());
                tx.send((p as usize, size)).unwrap();
            }
        });
        let r1 = r.clone();
        let consumer = std::thread::spawn(move || {
            for (p, size) in rx {
                // SAFETY: allocated by the producer with this layout, handed over once.
                unsafe { r1.pools.dealloc(1, p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
            }
        });
        producer.join().unwrap();
        consumer.join().unwrap();
        assert_eq!([r.pools.free_bytes(0), r.pools.free_bytes(1)], before);
    }

    #[test]
    fn small_blocks_are_reused_aligned_and_disjoint() {
        let r = region(1 << 20, 1);
        let before = r.pools.free_bytes(0);
        // Alignments up to 4096: above 64 they bypass the classes.
        let layout = |i: usize| Layout::from_size_align(1 + (i * 53) % 3000, 1 << (i % 13)).unwrap();
        for round in 0..3u8 {
            let blocks: Vec<_> = (0..300).map(|i| (r.pools.alloc(0, layout(i)), layout(i))).collect();
            for (i, (p, l)) in blocks.iter().enumerate() {
                assert!(!p.is_null());
                assert_eq!(*p as usize % l.align(), 0);
                // SAFETY: a live block of `l.size()` bytes, ours.
                unsafe { p.write_bytes(i as u8 ^ round, l.size()) };
            }
            for (i, (p, l)) in blocks.iter().enumerate() {
                // SAFETY: as above; every byte was written just now.
                let bytes = unsafe { core::slice::from_raw_parts(*p, l.size()) };
                assert!(bytes.iter().all(|&b| b == i as u8 ^ round), "block {i} overlaps another");
            }
            for (p, l) in blocks {
                // SAFETY: allocated above with this layout.
                unsafe { r.pools.dealloc(0, p, l) };
            }
            assert_eq!(r.pools.free_bytes(0), before);
        }
    }

    #[test]
    fn cached_small_blocks_go_back_to_the_heap_when_it_runs_dry() {
        let r = region(256 << 10, 1);
        let small = Layout::from_size_align(48, 8).unwrap();
        let mut blocks = Vec::new();
        loop {
            let p = r.pools.alloc(0, small);
            if p.is_null() {
                break;
            }
            blocks.push(p);
        }
        assert!(blocks.len() > 1000);
        for p in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { r.pools.dealloc(0, p, small) };
        }
        // Everything sits in the 64-byte class now; a large block needs it back.
        let big = Layout::from_size_align(200 << 10, 8).unwrap();
        let p = r.pools.alloc(0, big);
        assert!(!p.is_null(), "the cached blocks were not given back to the heap");
        // SAFETY: allocated just now with this layout.
        unsafe { r.pools.dealloc(0, p, big) };
    }

    #[test]
    fn full_pool_borrows_from_the_next() {
        let r = region(256 << 10, 2);
        let big = Layout::from_size_align(100 << 10, 8).unwrap();
        let a = r.pools.alloc(0, big);
        let b = r.pools.alloc(0, big);
        assert_eq!(r.pools.owner(a as usize), Some(0));
        assert_eq!(r.pools.owner(b as usize), Some(1), "second block must come from core 1's pool");
        assert!(r.pools.alloc(0, big).is_null(), "no pool has room: null, not a panic");
        // SAFETY: allocated above with this layout.
        unsafe {
            r.pools.dealloc(0, a, big);
            r.pools.dealloc(0, b, big);
        }
        assert_eq!(r.pools.free_bytes(1), 128 << 10);
    }
}
