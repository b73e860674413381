//! Small collectives through memory shared by the ranks of one VM: barrier, broadcast,
//! reduce, all-reduce, gather and scatter of at most [`SHM_BYTES`] per line.
//!
//! Ranks of a VM are threads of one address space, so a barrier or an 8-byte
//! all-reduce need not travel as messages: every rank owns a few cache lines of an
//! [`Arena`], writes its contribution there and stamps it with the collective's
//! sequence number; the others read it once the stamp appears. A barrier between two
//! ranks then costs one line transfer each way instead of a message each way through
//! the rings, matching and the unexpected queue.
//!
//! Protocol, per communicator (all ranks call collectives in the same order, so they
//! agree on the sequence number `s` of each one that comes here):
//! - *arrive*: rank `i` writes its length and data (at most [`SHM_BYTES`]) into its line
//!   `s % LINES`, then stores `s` in that line's stamp with Release. "Rank `j` arrived
//!   at `t`" is `line[j][t % LINES].stamp >= t` (Acquire).
//! - *read*: a rank reads `j`'s data of collective `s` only after seeing `j` arrived
//!   at `s`.
//! - *reuse*: before writing its line `s % LINES` again, a rank waits until every rank
//!   arrived at `s − LINES + 1`. A rank arrives there only after finishing `s − LINES`,
//!   the last collective that read that line, so nobody still reads it. With several
//!   lines a rank may run a few collectives ahead (a broadcast root does not wait for
//!   the slowest reader of the previous one), which matters when ranks share a core.
//! - *sleep*: a rank that has waited past the spin budget marks its sleep line, fences
//!   (SeqCst), re-checks, then blocks in `Environment::block`; every arrival fences
//!   after its stamp and wakes the ranks marked asleep (`Environment::wake`). The two
//!   fences order the pair (store-buffering), so no wake-up is lost.
//!
//! While it waits a rank keeps polling its transports (`Engine::progress`): a peer
//! blocked sending to it into a full ring must get through.
//!
//! *Too large*: a collective above [`SHM_BYTES`] travels as messages, but on a
//! communicator that has an arena it still takes a sequence number here: every rank
//! announces its length (no data) and, before sending, checks the lengths it would
//! check on the arena path: the root's (broadcast, scatter), everyone's (the root of a
//! gather or reduce, all-reduce) or nobody's (`announce`, [`Compare`]). So counts that
//! differ are reported (count error) on every path, also when one rank's length is
//! above [`SHM_BYTES`] and another's below, where the two would otherwise wait on
//! different paths for each other forever. A rank that checks nobody may still wait
//! for a rank that found the error; by default that rank ends the job.
//!
//! Reductions fold every rank's value in rank order on every rank, so all-reduce
//! results are bit-identical everywhere and non-commutative operations are correct.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering};

use crate::collective::operation::Operation;
use crate::communicator::CommState;
use crate::datatype::{DatatypeRef, Token};
use crate::error::{fail, ErrorClass, MpiResult};

/// Largest payload a collective carries through the arena (per rank; a scatter's whole
/// input). Above it, messages: the tree and ring algorithms move less data per rank
/// than every rank reading every other's (chosen by measurement, BENCHMARKS.md).
pub const SHM_BYTES: usize = 2048;
/// Payloads up to this size live in the line itself, beside the stamp and length
/// (keeping 16-byte alignment): the line that carries the stamp carries the data.
const INLINE_BYTES: usize = 48;

/// Spin this long before sleeping (like the ring waiter's default budget).
const SPIN_NS: u64 = 20_000;
/// Lines per rank: how many collectives a rank may be ahead of the slowest reader.
const LINES: u64 = 8;
/// Let the other ranks of the core run every this many empty checks.
const YIELD_EVERY: u32 = 2;
/// Poll the transports every this many empty checks.
const PROGRESS_EVERY: u32 = 16;

/// One rank's line for one collective in `LINES`.
#[repr(C, align(64))]
struct Line {
    stamp: AtomicU64,
    /// The rank's length for this collective; above [`SHM_BYTES`] with no data.
    len: AtomicU64,
    /// The payload if it is at most [`INLINE_BYTES`]; else it is in the slot's overflow.
    data: UnsafeCell<[u128; INLINE_BYTES / 16]>,
}

/// One rank's lines, and the line that says whether it sleeps.
#[repr(C, align(64))]
struct Slot {
    lines: [Line; LINES as usize],
    /// Sequence number the rank sleeps at (0: awake).
    sleeping: CacheLine,
    /// [`SHM_BYTES`] for each line, for payloads above [`INLINE_BYTES`]: allocated by the
    /// owner at its first such payload (null before), freed with the arena. Published
    /// to readers by the stamp, like the data.
    overflow: AtomicPtr<u128>,
}

/// Words of one slot's overflow area.
const OVERFLOW_WORDS: usize = LINES as usize * SHM_BYTES / 16;

#[repr(C, align(64))]
struct CacheLine(AtomicU64);

/// The shared lines of one communicator's ranks in one VM. Every rank of the
/// communicator gets the same `Arc` (see `Environment::collective_arena`).
pub struct Arena {
    slots: Box<[Slot]>,
}

// SAFETY: the only non-atomic memory is each line's `data` and each slot's overflow
// area, written by their owner rank only while no other rank reads them, and read by
// others only after an Acquire load of the stamp that the owner stored with Release
// after writing (module docs: arrive, read, reuse).
unsafe impl Sync for Arena {}
// SAFETY: plain memory and atomics; nothing tied to a thread.
unsafe impl Send for Arena {}

impl Arena {
    /// Made by the environment's registry (the `vbus` feature's `VbusNet`).
    #[cfg_attr(not(any(test, feature = "vbus")), allow(dead_code))]
    pub(crate) fn new(members: usize) -> Arena {
        let line = || Line { stamp: AtomicU64::new(0), len: AtomicU64::new(0), data: UnsafeCell::new([0; INLINE_BYTES / 16]) };
        let slot = |_| Slot {
            lines: core::array::from_fn(|_| line()),
            sleeping: CacheLine(AtomicU64::new(0)),
            overflow: AtomicPtr::new(core::ptr::null_mut()),
        };
        Arena { slots: (0..members).map(slot).collect() }
    }

    pub(crate) fn members(&self) -> usize {
        self.slots.len()
    }

    fn line(&self, rank: usize, seq: u64) -> &Line {
        &self.slots[rank].lines[(seq % LINES) as usize]
    }

    fn arrived(&self, rank: usize, seq: u64) -> bool {
        seq == 0 || self.line(rank, seq).stamp.load(Ordering::Acquire) >= seq
    }

    /// The payload `rank` stored for collective `seq`.
    ///
    /// Only after `arrived(rank, seq)`, and before this rank arrives at `seq + 1`.
    fn read(&self, rank: usize, seq: u64) -> &[u8] {
        let len = self.len(rank, seq).min(SHM_BYTES);
        let data = self.data(rank, seq, len);
        // SAFETY: the owner wrote these bytes (and allocated the overflow area) before
        // its Release store of the stamp we Acquire-loaded (`arrived`), and rewrites
        // them only after we arrive at `seq + 1` (reuse rule, which waits for
        // `seq + LINES − LINES + 1`), which our caller has not done yet. u128 words are
        // plain bytes; `data` points at room for `len` of them.
        unsafe { core::slice::from_raw_parts(data, len) }
    }

    /// Where `rank`'s payload of `len` bytes for collective `seq` lives: in the line,
    /// or in the slot's overflow area (which must exist).
    fn data(&self, rank: usize, seq: u64, len: usize) -> *mut u8 {
        if len <= INLINE_BYTES {
            return self.line(rank, seq).data.get().cast::<u8>();
        }
        let overflow = self.slots[rank].overflow.load(Ordering::Relaxed);
        assert!(!overflow.is_null(), "collective payload without its overflow area");
        overflow.cast::<u8>().wrapping_add((seq % LINES) as usize * SHM_BYTES)
    }

    /// The length `rank` announced for collective `seq` (same conditions as `read`).
    fn len(&self, rank: usize, seq: u64) -> usize {
        self.line(rank, seq).len.load(Ordering::Relaxed) as usize
    }

    /// Stores this rank's payload for collective `seq`, or only its length when the
    /// collective is too large for the arena (`payload` is `None`).
    ///
    /// Only after every rank arrived at `seq − LINES + 1`.
    fn write(&self, rank: usize, seq: u64, len: usize, payload: Option<&[u8]>) {
        let line = self.line(rank, seq);
        if let Some(payload) = payload {
            assert!(payload.len() == len && len <= SHM_BYTES);
            let overflow = &self.slots[rank].overflow;
            if len > INLINE_BYTES && overflow.load(Ordering::Relaxed).is_null() {
                let area = Box::into_raw(alloc::vec![0u128; OVERFLOW_WORDS].into_boxed_slice());
                overflow.store(area.cast::<u128>(), Ordering::Relaxed);
            }
            let data = self.data(rank, seq, len);
            // SAFETY: only this rank writes its lines and overflow area, and (reuse
            // rule, our caller's contract) nobody reads this part of them until we store
            // the new stamp; `data` has room for `len` bytes.
            unsafe { core::slice::from_raw_parts_mut(data, len).copy_from_slice(payload) };
        }
        line.len.store(len as u64, Ordering::Relaxed);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for slot in self.slots.iter() {
            let area = slot.overflow.load(Ordering::Relaxed);
            if !area.is_null() {
                // SAFETY: allocated in `write` as a boxed slice of OVERFLOW_WORDS words;
                // nobody else holds the arena any more (`&mut self`).
                drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(area, OVERFLOW_WORDS)) });
            }
        }
    }
}

/// The ranks whose announced length a rank of a collective too large for the arena
/// checks before sending: the same ranks whose length it checks on the arena path,
/// so that every mismatch is seen by a rank that waits (and, by default, ends the job).
#[derive(Clone, Copy)]
pub(crate) enum Compare {
    /// All-reduce; the root of a reduce or gather.
    Everyone,
    /// Every rank of a broadcast or scatter (the root itself compares with nobody).
    Root(usize),
    /// A rank that only contributes: the non-roots of a reduce or gather.
    Nobody,
}

/// A communicator's use of its arena: which slot is ours and the sequence number.
pub(crate) struct ShmComm {
    arena: Arc<Arena>,
    rank: usize,
    seq: Cell<u64>,
}

impl ShmComm {
    pub(crate) fn new(arena: Arc<Arena>, rank: usize) -> ShmComm {
        ShmComm { arena, rank, seq: Cell::new(0) }
    }

    fn next(&self) -> u64 {
        let s = self.seq.get() + 1;
        self.seq.set(s);
        s
    }

    fn others(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.arena.members()).filter(move |&j| j != self.rank)
    }

    /// Stamps our line for `seq` (after `write`, if any) and wakes sleeping ranks.
    fn arrive(&self, comm: &CommState, seq: u64) {
        self.arena.line(self.rank, seq).stamp.store(seq, Ordering::Release);
        // Store-buffering pair with the sleeper's mark-then-recheck in `wait`.
        fence(Ordering::SeqCst);
        for j in self.others() {
            if self.arena.slots[j].sleeping.0.load(Ordering::Relaxed) != 0 {
                comm.engine.borrow().env.wake(comm.world_rank_of(j as i32));
            }
        }
    }

    /// Waits until `done()`; keeps the transports moving and sleeps after the budget.
    fn wait(&self, comm: &CommState, seq: u64, done: impl Fn() -> bool) {
        let mut checks = 0u32;
        let mut since = 0u64;
        loop {
            if done() {
                return;
            }
            checks = checks.wrapping_add(1);
            if checks % PROGRESS_EVERY != 0 {
                if checks % YIELD_EVERY == 0 {
                    // The rank we wait for may be one of this core's, not running now.
                    comm.engine.borrow().env.yield_now();
                } else {
                    core::hint::spin_loop();
                }
                continue;
            }
            let mut engine = comm.engine.borrow_mut();
            engine.progress();
            engine.env.yield_now();
            let now = engine.env.now_ns();
            if since == 0 {
                since = now.max(1);
            }
            if now - since < SPIN_NS {
                continue;
            }
            let sleeping = &self.arena.slots[self.rank].sleeping.0;
            sleeping.store(seq, Ordering::Relaxed);
            // Store-buffering pair with the fence in `arrive`.
            fence(Ordering::SeqCst);
            if !done() {
                engine.env.block();
            }
            sleeping.store(0, Ordering::Relaxed);
        }
    }

    fn all_arrived(&self, seq: u64) -> bool {
        self.others().all(|j| self.arena.arrived(j, seq))
    }

    /// Waits until the line for `seq` may be written (reuse rule), then writes it.
    fn write(&self, comm: &CommState, seq: u64, payload: &[u8]) {
        self.write_len(comm, seq, payload.len(), Some(payload));
    }

    fn write_len(&self, comm: &CommState, seq: u64, len: usize, payload: Option<&[u8]>) {
        let reused_after = (seq + 1).saturating_sub(LINES);
        self.wait(comm, seq, || self.all_arrived(reused_after));
        self.arena.write(self.rank, seq, len, payload);
    }

    fn check_len(&self, rank: usize, seq: u64, expected: usize) -> MpiResult<()> {
        let len = self.arena.len(rank, seq);
        if len != expected {
            return fail(
                ErrorClass::Count,
                format!("collective: rank {} sent {} bytes, {} expected (counts differ between ranks)", rank, len, expected),
            );
        }
        Ok(())
    }

    /// A collective of `len` bytes (above [`SHM_BYTES`]) about to travel as messages:
    /// announces `len` and checks it against the ranks in `compare` (module docs).
    pub(crate) fn announce(&self, comm: &CommState, len: usize, compare: Compare) -> MpiResult<()> {
        let seq = self.next();
        self.write_len(comm, seq, len, None);
        self.arrive(comm, seq);
        match compare {
            Compare::Everyone => {
                self.wait(comm, seq, || self.all_arrived(seq));
                self.others().try_for_each(|rank| self.check_len(rank, seq, len))
            }
            Compare::Root(root) if root != self.rank => {
                self.wait(comm, seq, || self.arena.arrived(root, seq));
                self.check_len(root, seq, len)
            }
            Compare::Root(_) | Compare::Nobody => Ok(()),
        }
    }

    pub(crate) fn barrier(&self, comm: &CommState) -> MpiResult<()> {
        let seq = self.next();
        self.arrive(comm, seq);
        self.wait(comm, seq, || self.all_arrived(seq));
        Ok(())
    }

    pub(crate) fn broadcast(&self, comm: &CommState, root: usize, buffer: &mut [u8]) -> MpiResult<()> {
        let seq = self.next();
        if self.rank == root {
            self.write(comm, seq, buffer);
            self.arrive(comm, seq);
            return Ok(());
        }
        self.arrive(comm, seq);
        self.wait(comm, seq, || self.arena.arrived(root, seq));
        self.check_len(root, seq, buffer.len())?;
        buffer.copy_from_slice(self.arena.read(root, seq));
        Ok(())
    }

    /// Gather of equal blocks: rank i's `block` lands in part i of the root's `output`.
    pub(crate) fn gather(&self, comm: &CommState, root: usize, block: &[u8], output: Option<&mut [u8]>) -> MpiResult<()> {
        let seq = self.next();
        self.write(comm, seq, block);
        self.arrive(comm, seq);
        let Some(output) = output else { return Ok(()) };
        debug_assert_eq!(self.rank, root);
        self.wait(comm, seq, || self.all_arrived(seq));
        for (rank, part) in output.chunks_mut(block.len().max(1)).enumerate().take(if block.is_empty() { 0 } else { self.arena.members() }) {
            self.check_len(rank, seq, block.len())?;
            part.copy_from_slice(self.arena.read(rank, seq));
        }
        Ok(())
    }

    /// Scatter of equal blocks: part i of the root's `input` lands in rank i's `output`.
    pub(crate) fn scatter(&self, comm: &CommState, root: usize, input: Option<&[u8]>, output: &mut [u8]) -> MpiResult<()> {
        let seq = self.next();
        let block = output.len();
        if let Some(input) = input {
            self.write(comm, seq, input);
            self.arrive(comm, seq);
            output.copy_from_slice(&input[root * block..(root + 1) * block]);
            return Ok(());
        }
        self.arrive(comm, seq);
        self.wait(comm, seq, || self.arena.arrived(root, seq));
        self.check_len(root, seq, block * self.arena.members())?;
        output.copy_from_slice(&self.arena.read(root, seq)[self.rank * block..(self.rank + 1) * block]);
        Ok(())
    }

    /// Reduce (`output` on the root only) or, with every rank passing `output`, all-reduce.
    pub(crate) fn reduce(&self, comm: &CommState, input: &[u8], output: Option<&mut [u8]>, op: &dyn Operation, datatype: DatatypeRef) -> MpiResult<()> {
        let seq = self.next();
        self.write(comm, seq, input);
        self.arrive(comm, seq);
        let Some(output) = output else { return Ok(()) };
        self.wait(comm, seq, || self.all_arrived(seq));
        // Scratch on the stack, aligned for any element type (the allocator costs more
        // than a small reduction), and no bigger than needed: zeroing it is not free.
        if input.len() <= 64 {
            self.fold(seq, output, &mut [0u128; 4], op, datatype)
        } else {
            self.fold(seq, output, &mut [0u128; SHM_BYTES / 16], op, datatype)
        }
    }

    /// Folds every rank's value of collective `seq` in rank order into `output`, with
    /// `scratch` (at least `output.len()` bytes) as the other half of each step.
    fn fold(&self, seq: u64, output: &mut [u8], scratch: &mut [u128], op: &dyn Operation, datatype: DatatypeRef) -> MpiResult<()> {
        let len = output.len();
        for rank in 0..self.arena.members() {
            self.check_len(rank, seq, len)?;
        }
        let scratch = bytes_of(scratch, len);
        // Ranks 0..rank are in `accumulated`; `op` takes it first (rank order) and leaves
        // the result in rank's copy, which becomes `accumulated`.
        let (mut accumulated, mut next) = (scratch, output);
        accumulated.copy_from_slice(self.arena.read(0, seq));
        for rank in 1..self.arena.members() {
            next.copy_from_slice(self.arena.read(rank, seq));
            op.reduce(accumulated, next, datatype, Token(()))?;
            core::mem::swap(&mut accumulated, &mut next);
        }
        if (self.arena.members() - 1) % 2 == 0 {
            // An even number of swaps: the result is in the scratch, `next` is `output`.
            next.copy_from_slice(accumulated);
        }
        Ok(())
    }
}

/// The first `len` bytes of `words`.
fn bytes_of(words: &mut [u128], len: usize) -> &mut [u8] {
    assert!(len <= words.len() * 16);
    // SAFETY: u128 has no padding and any bytes are valid u128 words; `len` bytes are
    // inside `words`, which we borrow mutably for the result's lifetime.
    unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}
