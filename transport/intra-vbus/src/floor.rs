//! Yardsticks for the bus's latency, shared by the host benchmark
//! (`examples/pingpong.rs`) and the VM one (`vbus-test`): what two cores
//! passing data cost with no bus software at all.
//!
//! Each is a ping-pong of rounds `i = 0, 1, …`: the asking core calls
//! [`ask`](CacheLine::ask)`(i)` and returns when the answer is in, the
//! answering core calls [`answer`](CacheLine::answer)`(i)`. The caller times
//! the asking side; one way is half a round.
//!
//! - [`CacheLine`]: one line, written by each side in turn. A core polls the
//!   very line it wrote last, so the peer's read takes the line over whole and
//!   its write finds it already there: one transfer per way. This is the
//!   issue's "cache-line one-way figure".
//! - [`CacheLine::two_lines`]: the answer goes back in a second line. Each line
//!   has one writer, as every line of a VIRTIO split ring has; the writer must
//!   first take its line back from the core polling it, so a way costs that
//!   and the transfer.
//! - [`BareRing`]: the bus's layout with only its protocol: a ring per
//!   direction of 64 one-line slots, three words and a stamp stored last
//!   (Release), the publish's `fence(SeqCst)`, the receiver spinning on the
//!   next slot's stamp. The floor for a ring per direction; what the bus's
//!   8 B figure adds to it is the bus's software.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};

#[repr(align(64))]
struct Line(AtomicU64);

/// One cache line passed back and forth (or two, see [`two_lines`](Self::two_lines)).
pub struct CacheLine {
    ask: Line,
    answer: Option<Line>,
}

impl CacheLine {
    /// The question and the answer in one line.
    pub fn one_line() -> Self {
        CacheLine { ask: Line(AtomicU64::new(0)), answer: None }
    }

    /// The answer in a second line.
    pub fn two_lines() -> Self {
        CacheLine { ask: Line(AtomicU64::new(0)), answer: Some(Line(AtomicU64::new(0))) }
    }

    fn answer_line(&self) -> &AtomicU64 {
        &self.answer.as_ref().unwrap_or(&self.ask).0
    }

    /// Round `i`, asking side.
    pub fn ask(&self, i: u64) {
        self.ask.0.store(2 * i + 1, Ordering::Release);
        spin_until(self.answer_line(), 2 * i + 2);
    }

    /// Round `i`, answering side.
    pub fn answer(&self, i: u64) {
        spin_until(&self.ask.0, 2 * i + 1);
        self.answer_line().store(2 * i + 2, Ordering::Release);
    }
}

fn spin_until(word: &AtomicU64, value: u64) {
    while word.load(Ordering::Acquire) != value {
        core::hint::spin_loop();
    }
}

#[repr(C, align(64))]
#[derive(Default)]
struct Slot {
    words: [AtomicU64; 3],
    stamp: AtomicU16,
}

const SLOTS: usize = 64;

/// A ring per direction with nothing but the protocol (see the module docs).
pub struct BareRing {
    to_answerer: Box<[Slot]>,
    to_asker: Box<[Slot]>,
}

impl Default for BareRing {
    fn default() -> Self {
        let ring = || (0..SLOTS).map(|_| Slot::default()).collect::<Vec<_>>().into_boxed_slice();
        BareRing { to_answerer: ring(), to_asker: ring() }
    }
}

impl BareRing {
    /// Round `i`, asking side.
    pub fn ask(&self, i: u64) {
        send(&self.to_answerer, i);
        receive(&self.to_asker, i);
    }

    /// Round `i`, answering side.
    pub fn answer(&self, i: u64) {
        receive(&self.to_answerer, i);
        send(&self.to_asker, i);
    }
}

fn stamp(i: u64) -> u16 {
    (i as u16).wrapping_add(1)
}

fn send(ring: &[Slot], i: u64) {
    let slot = &ring[i as usize % SLOTS];
    for w in &slot.words {
        w.store(i, Ordering::Relaxed);
    }
    slot.stamp.store(stamp(i), Ordering::Release);
    fence(Ordering::SeqCst);
}

fn receive(ring: &[Slot], i: u64) {
    let slot = &ring[i as usize % SLOTS];
    while slot.stamp.load(Ordering::Acquire) != stamp(i) {
        core::hint::spin_loop();
    }
    let sum = slot.words.iter().fold(0u64, |s, w| s.wrapping_add(w.load(Ordering::Relaxed)));
    assert_eq!(sum, i.wrapping_mul(3), "bare ring: words torn");
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ping_pong(rounds: u64, answer: impl Fn(u64) + Sync, ask: impl Fn(u64)) {
        std::thread::scope(|s| {
            s.spawn(|| (0..rounds).for_each(&answer));
            (0..rounds).for_each(&ask);
        });
    }

    #[test]
    fn yardsticks_complete_their_rounds() {
        let (one, two, ring) = (CacheLine::one_line(), CacheLine::two_lines(), BareRing::default());
        ping_pong(1000, |i| one.answer(i), |i| one.ask(i));
        ping_pong(1000, |i| two.answer(i), |i| two.ask(i));
        // Past the 64 slots and the 16-bit stamp's wrap.
        ping_pong(70_000, |i| ring.answer(i), |i| ring.ask(i));
    }
}
