//! Model checks of the ring protocol (publish/consume, descriptor return and
//! notification suppression) on tiny rings, run by loom over every
//! interleaving and every weak-memory outcome it models:
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p intra-vbus --release --lib loom`
//!
//! A lost wake-up shows up as a loom deadlock (a thread waiting forever), a
//! missing happens-before edge as a loom data-race error on the descriptor or
//! header cells (or on the sender's buffer guard below), a stale read as a
//! failed assertion.

use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::sync::{Condvar, Mutex};
use loom::thread;

use super::*;

/// `Notify` with a wake-up token per core (token semantics, like the VM's
/// pending IPI), built on loom's modeled mutex and condition variable.
/// (Loom's `unpark` would also wake a thread blocked in `join`.)
struct LoomNotify {
    tokens: Vec<(Mutex<bool>, Condvar)>,
}

impl LoomNotify {
    fn new(cores: usize) -> Self {
        LoomNotify { tokens: (0..cores).map(|_| (Mutex::new(false), Condvar::new())).collect() }
    }
}

impl Notify for LoomNotify {
    fn notify(&self, core: CoreId) {
        let (token, condvar) = &self.tokens[core];
        *token.lock().unwrap() = true;
        condvar.notify_one();
    }

    fn wait(&self, core: CoreId) {
        let (token, condvar) = &self.tokens[core];
        let mut woken = token.lock().unwrap();
        while !*woken {
            woken = condvar.wait(woken).unwrap();
        }
        *woken = false;
    }
}

fn env(tag: i32) -> Envelope {
    Envelope { src_rank: 0, dst_rank: 1, tag, comm: 1, kind: 0 }
}

/// Runs `sender` on a loom thread as core 0 and `receiver` on the model's
/// main thread as core 1. Spinning is off: every wait announces, re-checks
/// and parks, so the suppression protocol is on every path.
fn model_pair(
    queue_size: u16,
    eager_max: usize,
    sender: fn(&mut Endpoint<'static, LoomNotify>),
    receiver: fn(&mut Endpoint<'static, LoomNotify>),
) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        let config = Config { cores: 2, queue_size, eager_max, spin_polls: 0 };
        let bus = Arc::new(Bus::new(config, LoomNotify::new(2)).unwrap());
        // SAFETY: the only thread using this reference besides ours is joined
        // below, before `bus` is dropped.
        let bus_ref: &'static Bus<LoomNotify> = unsafe { &*Arc::as_ptr(&bus) };
        let sending = thread::spawn(move || {
            sender(&mut bus_ref.endpoint(0).unwrap());
        });
        receiver(&mut bus_ref.endpoint(1).unwrap());
        sending.join().unwrap();
        drop(bus);
    });
}

/// Three eager messages through a two-descriptor ring: the sender hits a full
/// ring and must sleep until a descriptor comes back (used-ring interrupt);
/// the receiver sleeps until messages arrive (avail notification). Indices
/// and descriptors are reused; order and contents must survive.
#[test]
fn loom_eager_fifo_full_ring_and_both_wakeups() {
    model_pair(
        2,
        8,
        |ep| {
            for tag in 0..3 {
                loop {
                    // SAFETY: eager (1 byte ≤ eager_max), complete at once.
                    match unsafe { ep.try_isend(1, env(tag), &[tag as u8 + 10]) } {
                        Ok(_) => break,
                        Err(SendError::WouldBlock) => ep.wait_for_work(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        },
        |ep| {
            for tag in 0..3 {
                let m = ep.recv();
                assert_eq!(m.header().env.tag, tag);
                assert_eq!(m.payload(), &[tag as u8 + 10]);
                ep.release(m);
            }
        },
    );
}

/// One message, receiver asleep or polling at any point: it must be woken.
#[test]
fn loom_receiver_wakeup_not_lost() {
    model_pair(
        2,
        8,
        |ep| ep.send(1, env(5), &[1, 2, 3]).unwrap(),
        |ep| {
            let m = ep.recv();
            assert_eq!(m.payload(), &[1, 2, 3]);
            ep.release(m);
        },
    );
}

/// Rendezvous: the receiver reads the sender's own buffer, and the sender
/// may write it again only after the descriptor came back. The buffer is
/// guarded by a loom cell, so a missing happens-before edge between the
/// receiver's read and the sender's reuse is reported as a data race.
#[test]
fn loom_rendezvous_buffer_reused_only_after_completion() {
    loom::lazy_static! {
        static ref GUARD: UnsafeCell<()> = UnsafeCell::new(());
    }
    model_pair(
        2,
        0,
        |ep| {
            let data = vec![7u8; 4];
            // SAFETY: `data` lives until after the handle tests complete.
            let h = unsafe { ep.try_isend(1, env(1), &data) }.unwrap();
            ep.wait_send(h);
            GUARD.with_mut(|_| {}); // "writes the buffer again"
            drop(data);
        },
        |ep| {
            let m = ep.recv();
            assert_eq!(m.header().protocol, Protocol::Rendezvous);
            GUARD.with(|_| assert_eq!(m.payload(), &[7, 7, 7, 7]));
            ep.release(m);
        },
    );
}
