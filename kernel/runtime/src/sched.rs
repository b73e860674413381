//! Cooperative threads: each has its own stack slot (guard page below),
//! each core has a run queue and a scheduler context on its boot stack.
//! A thread runs until it yields, blocks, migrates or ends; an idle core
//! spins for the configured budget, then halts until a wake-up IPI (or, when
//! its threads wait with deadlines, until the earliest deadline or a device
//! interrupt: see `waiters`).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use spin::{Mutex, Once};
use toro_abi::layout::{STACK_ARENA, STACK_SLOT_SIZE};

use crate::arch::{self, SLOT_RESERVED};
use crate::runq::RunQueue;
use crate::state::ThreadState;
use crate::waiters::Waiting;

pub const NO_RANK: u32 = u32::MAX;

pub struct Thread {
    /// Saved stack pointer while switched out.
    context: UnsafeCell<usize>,
    core: AtomicUsize,
    state: ThreadState,
    start: UnsafeCell<Option<Box<dyn FnOnce() + Send>>>,
    slot: usize,
    rank: AtomicU32,
    /// Shared with the JoinHandle; the scheduler takes it out at exit.
    join: Mutex<Option<Arc<JoinState>>>,
    /// Console text of the current unfinished line (see console.rs).
    pub(crate) line: UnsafeCell<String>,
}

// SAFETY: `context`, `start` and `line` are touched only by the thread
// itself or by the scheduler of the core it is switched out on, never both
// at once (a thread is on one run queue or running on one core at a time).
unsafe impl Sync for Thread {}
unsafe impl Send for Thread {}

impl Thread {
    fn new(slot: usize, core: usize, rank: u32, start: Option<Box<dyn FnOnce() + Send>>, join: Option<Arc<JoinState>>) -> Arc<Thread> {
        Arc::new(Thread {
            context: UnsafeCell::new(0),
            core: AtomicUsize::new(core),
            state: ThreadState::new_runnable(),
            start: UnsafeCell::new(start),
            slot,
            rank: AtomicU32::new(rank),
            join: Mutex::new(join),
            line: UnsafeCell::new(String::new()),
        })
    }

    pub fn core(&self) -> usize {
        self.core.load(Ordering::Relaxed)
    }

    pub fn rank(&self) -> Option<u32> {
        Some(self.rank.load(Ordering::Relaxed)).filter(|r| *r != NO_RANK)
    }

    pub fn set_rank(&self, rank: u32) {
        self.rank.store(rank, Ordering::Relaxed);
    }
}

/// What the scheduler does with a thread that just switched to it.
enum After {
    Yield,
    Migrate(usize),
    Block,
    Exit,
}

struct Core {
    run_queue: RunQueue<Arc<Thread>>,
    scheduler_context: UnsafeCell<usize>,
    after: UnsafeCell<After>,
    idle: Arc<Thread>,
    switches: AtomicUsize,
    /// The APIC timer this core armed last: when it fires (`now_ns` clock), and a
    /// time before which it surely has not fired yet (the timer's rate is measured,
    /// not exact). A halt with a later deadline leaves it running instead of
    /// arming it again (each arming is a VM exit under PVM).
    timer_fires_at: AtomicU64,
    timer_pending_until: AtomicU64,
}

// SAFETY: scheduler_context and after are used only on the core itself.
unsafe impl Sync for Core {}

static CORES: Once<Vec<Core>> = Once::new();
static FREE_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static SPIN_NS: AtomicUsize = AtomicUsize::new(0);
static HALTS: AtomicU64 = AtomicU64::new(0);
static TIMED_HALTS: AtomicU64 = AtomicU64::new(0);
static TIMER_ARMS: AtomicU64 = AtomicU64::new(0);
static IPIS: AtomicU64 = AtomicU64::new(0);

/// Traps the scheduler made since boot (each costs VM exits under PVM: the
/// trap itself, the halt, the interrupt's acknowledgement, the timer's arming).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapCounts {
    /// Halts until an IPI (no waiters).
    pub halts: u64,
    /// Halts bounded by the APIC timer (waiters with deadlines).
    pub timed_halts: u64,
    /// Times the timer was armed for them (the others left an earlier arming running).
    pub timer_arms: u64,
    /// Wake-up IPIs sent.
    pub ipis: u64,
}

pub fn trap_counts() -> TrapCounts {
    TrapCounts {
        halts: HALTS.load(Ordering::Relaxed),
        timed_halts: TIMED_HALTS.load(Ordering::Relaxed),
        timer_arms: TIMER_ARMS.load(Ordering::Relaxed),
        ipis: IPIS.load(Ordering::Relaxed),
    }
}

fn cores() -> &'static [Core] {
    CORES.get().expect("scheduler not initialised")
}

fn slot_top(slot: usize) -> usize {
    STACK_ARENA as usize + (slot + 1) * STACK_SLOT_SIZE as usize
}

/// The owner pointer at the top of every stack slot.
fn slot_owner(slot: usize) -> *mut *const Thread {
    (slot_top(slot) - 8) as *mut *const Thread
}

fn current_slot() -> usize {
    (arch::stack_pointer() - STACK_ARENA as usize) / STACK_SLOT_SIZE as usize
}

/// The running thread, found from the stack pointer; null before init.
fn current_ptr() -> *const Thread {
    // SAFETY: every stack we run on is a slot of the arena; its top word
    // is either null or the Arc-owned thread of that slot.
    unsafe { *slot_owner(current_slot()) }
}

pub fn current() -> &'static Thread {
    let t = current_ptr();
    assert!(!t.is_null(), "no current thread before the scheduler runs");
    // SAFETY: the thread's Arc is held by its core (running) until it exits,
    // and it is running now.
    unsafe { &*t }
}

/// The core the caller runs on.
pub fn current_core() -> usize {
    let t = current_ptr();
    if t.is_null() {
        current_slot() // boot stacks: slot i belongs to core i
    } else {
        // SAFETY: as in `current`.
        unsafe { (*t).core() }
    }
}

pub fn core_count() -> usize {
    cores().len()
}

/// Called by core 0 once the heap works.
pub(crate) fn init(core_count: usize, total_slots: usize, spin_ns: u64) {
    SPIN_NS.store(spin_ns as usize, Ordering::Relaxed);
    *FREE_SLOTS.lock() = (core_count..total_slots).rev().collect();
    CORES.call_once(|| {
        (0..core_count)
            .map(|c| Core {
                run_queue: RunQueue::new(),
                scheduler_context: UnsafeCell::new(0),
                after: UnsafeCell::new(After::Yield),
                idle: Thread::new(c, c, NO_RANK, None, None),
                switches: AtomicUsize::new(0),
                timer_fires_at: AtomicU64::new(0),
                timer_pending_until: AtomicU64::new(0),
            })
            .collect()
    });
}

/// Each core, on its boot stack: become the core's scheduler.
pub(crate) fn run_scheduler(core: usize) -> ! {
    let me = &cores()[core];
    me.idle.state.set_running();
    // SAFETY: slot `core` is this core's boot stack; its owner is the idle thread.
    unsafe { *slot_owner(core) = Arc::as_ptr(&me.idle) };
    loop {
        match me.run_queue.pop() {
            Some(t) => run(me, core, t),
            None => idle(me, core),
        }
    }
}

fn run(me: &Core, core: usize, t: Arc<Thread>) {
    t.core.store(core, Ordering::Relaxed);
    t.state.set_running();
    me.switches.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `t` is switched out (it came off a run queue), so its saved
    // context is complete; ours is saved into our own scheduler slot.
    unsafe { arch::toro_switch(me.scheduler_context.get(), *t.context.get()) };
    // SAFETY: the thread that just switched back set `after` on this core.
    let after = unsafe { core::ptr::replace(me.after.get(), After::Yield) };
    match after {
        After::Yield => push(core, t),
        After::Migrate(to) => push(to, t),
        After::Block => {
            if !t.state.commit_block() {
                push(core, t);
            }
        }
        After::Exit => {
            FREE_SLOTS.lock().push(t.slot);
            // Release the thread before announcing the end, so that a joiner
            // finds every allocation of the thread back in its pool.
            let join = t.join.lock().take();
            drop(t);
            if let Some(join) = join {
                join.finished.store(true, Ordering::Release);
                let joiner = join.joiner.lock().take();
                if let Some(j) = joiner {
                    wake(&j);
                }
            }
        }
    }
}

fn idle(me: &Core, core: usize) {
    // Every waiter gave a deadline: they spun before they blocked, and may be
    // waiting for a device interrupt, which only a halt lets in. Halt at once
    // until the earliest deadline (or an IPI, or a device interrupt), then let
    // them all look again. No spinning, and no page touching either: it would
    // hold the interrupt back (≈ 70 µs a step) and burn the host CPU the
    // waiting is meant to give back.
    if let Waiting::Until(deadline) = crate::waiters::waiting(core) {
        if me.run_queue.announce_halt() {
            let now = crate::time::now_ns();
            if deadline > now {
                TIMED_HALTS.fetch_add(1, Ordering::Relaxed);
                arch::halt(timer_for(me, now, deadline));
            }
        }
        me.run_queue.end_halt();
        crate::waiters::wake_all(core);
        return;
    }
    let budget = SPIN_NS.load(Ordering::Relaxed) as u64;
    let start = crate::time::now_ns();
    while crate::time::now_ns() - start < budget {
        if !me.run_queue.is_empty() {
            return;
        }
        core::hint::spin_loop();
    }
    // Idle time past the spin budget goes to touching the rest of this
    // core's heap, 4 pages at a time (≈ 70 µs under PVM). Touching first
    // made a rank that waits a few µs for its peer pay up to 16 page
    // touches (≈ 0.3 ms) per wait for the first seconds of a job.
    if crate::start::pretouch_step(core, 4) {
        return;
    }
    // Threads blocked on this core's wait lists without a deadline sleep with
    // the core: only a notify ends their wait, and the notify that makes one
    // runnable pushes it onto this run queue. A push after the announcement
    // sends the IPI; an IPI that arrives before the halt trap stays pending
    // (ring 3 runs with interrupts masked) and ends the halt at once.
    if me.run_queue.announce_halt() {
        HALTS.fetch_add(1, Ordering::Relaxed);
        arch::halt(0);
    }
    me.run_queue.end_halt();
}

/// The ticks to arm the APIC timer with for a halt until `deadline`, or 0 when
/// the timer armed earlier fires before `deadline` and has not fired yet.
fn timer_for(me: &Core, now: u64, deadline: u64) -> u32 {
    if me.timer_pending_until.load(Ordering::Relaxed) > now && me.timer_fires_at.load(Ordering::Relaxed) <= deadline {
        return 0;
    }
    let ns = deadline - now;
    me.timer_fires_at.store(deadline, Ordering::Relaxed);
    me.timer_pending_until.store(now + ns - ns / 16, Ordering::Relaxed);
    TIMER_ARMS.fetch_add(1, Ordering::Relaxed);
    crate::time::timer_ticks(ns)
}

fn push(core: usize, t: Arc<Thread>) {
    if cores()[core].run_queue.push(t) && core != current_core() {
        IPIS.fetch_add(1, Ordering::Relaxed);
        arch::send_ipi(core);
    }
}

fn switch_to_scheduler(after: After) {
    let t = current();
    let core = &cores()[t.core()];
    // SAFETY: `after` and the contexts are this core's; the scheduler reads
    // `after` only once we have switched.
    unsafe {
        *core.after.get() = after;
        arch::toro_switch(t.context.get(), *core.scheduler_context.get());
    }
}

fn is_idle_thread(t: &Thread) -> bool {
    t.slot < cores().len()
}

/// Lets the other threads of this core run.
pub fn yield_now() {
    let t = current();
    if is_idle_thread(t) {
        return;
    }
    crate::waiters::wake_expired(t.core());
    if cores()[t.core()].run_queue.is_empty() {
        return;
    }
    switch_to_scheduler(After::Yield);
}

/// Moves the calling thread to `core`; returns running there.
pub fn migrate(core: usize) {
    assert!(core < core_count(), "migrate to core {core}: this VM has {} cores", core_count());
    let t = current();
    assert!(!is_idle_thread(t), "a core's scheduler context cannot migrate");
    if t.core() != core {
        switch_to_scheduler(After::Migrate(core));
    }
}

/// Blocks until `wake` is called for this thread (perhaps already). May
/// return early: callers re-check their condition in a loop.
pub fn block() {
    let t = current();
    assert!(!is_idle_thread(t), "a core's scheduler context cannot block");
    if t.state.begin_block() {
        switch_to_scheduler(After::Block);
    }
}

/// Makes `t` runnable again if it blocks or is about to.
pub fn wake(t: &Arc<Thread>) {
    if t.state.wake() {
        push(t.core(), t.clone());
    }
}

/// The Arc of the running thread (to hand to a waker).
pub fn current_arc() -> Arc<Thread> {
    let t = current_ptr();
    // SAFETY: as in `current`; the count is raised for the new Arc.
    unsafe {
        Arc::increment_strong_count(t);
        Arc::from_raw(t)
    }
}

#[no_mangle]
extern "C" fn toro_thread_main() -> ! {
    let t = current();
    // SAFETY: the start closure is taken once, by the thread itself.
    let start = unsafe { (*t.start.get()).take() };
    if let Some(f) = start {
        f();
    }
    crate::console::flush_line(t);
    switch_to_scheduler(After::Exit);
    unreachable!("an exited thread was resumed")
}

/// What a thread and its JoinHandle share (and nobody else).
struct JoinState {
    finished: AtomicBool,
    joiner: Mutex<Option<Arc<Thread>>>,
}

pub struct JoinHandle<T> {
    join: Arc<JoinState>,
    result: Arc<Mutex<Option<T>>>,
}

impl<T> JoinHandle<T> {
    /// Waits for the thread to end and returns what its closure returned.
    pub fn join(self) -> T {
        loop {
            if self.join.finished.load(Ordering::Acquire) {
                break;
            }
            *self.join.joiner.lock() = Some(current_arc());
            if self.join.finished.load(Ordering::Acquire) {
                break;
            }
            block();
        }
        drop(self.join.joiner.lock().take());
        // The exiting thread's scheduler drops its reference to the shared
        // state right after setting `finished`; wait for it, so the state is
        // freed here, deterministically.
        while Arc::strong_count(&self.join) > 1 {
            core::hint::spin_loop();
        }
        self.result.lock().take().expect("joined thread produced no result")
    }

    pub fn is_finished(&self) -> bool {
        self.join.finished.load(Ordering::Acquire)
    }
}

/// Starts `f` as a new thread on `core`. Panics when every stack slot is taken.
pub fn spawn_on<T: Send + 'static>(core: usize, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    assert!(core < core_count(), "spawn on core {core}: this VM has {} cores", core_count());
    let slot = FREE_SLOTS.lock().pop().expect("out of thread stacks (128 slots of 256 KiB)");
    let result = Arc::new(Mutex::new(None));
    let r = result.clone();
    let rank = current_rank_raw();
    let join = Arc::new(JoinState { finished: AtomicBool::new(false), joiner: Mutex::new(None) });
    let t = Thread::new(slot, core, rank, Some(Box::new(move || *r.lock() = Some(f()))), Some(join.clone()));
    let top = slot_top(slot);
    // SAFETY: the slot is free (taken off the free list) and mapped. Layout
    // below the reserved top: the trampoline's address (toro_switch's `ret`
    // lands there with rsp 16-aligned, so its `call` aligns like any call),
    // then six zeroed callee-saved registers for toro_switch to pop.
    unsafe {
        *slot_owner(slot) = Arc::as_ptr(&t);
        let base = top - SLOT_RESERVED;
        let frame = base as *mut usize;
        frame.sub(1).write(arch::toro_thread_trampoline as *const () as usize);
        for i in 2..=7 {
            frame.sub(i).write(0);
        }
        *t.context.get() = base - 7 * 8;
    }
    push(core, t);
    JoinHandle { join, result }
}

/// Starts `f` as a new thread on the calling core.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    spawn_on(current_core(), f)
}

fn current_rank_raw() -> u32 {
    let t = current_ptr();
    if t.is_null() {
        NO_RANK
    } else {
        // SAFETY: as in `current`.
        unsafe { (*t).rank.load(Ordering::Relaxed) }
    }
}

/// Context switches done by `core`'s scheduler so far.
pub fn switch_count(core: usize) -> usize {
    cores()[core].switches.load(Ordering::Relaxed)
}
