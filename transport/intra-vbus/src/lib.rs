//! # intra-vbus: core-to-core messages inside one Toro VM
//!
//! Every ordered pair of cores `i → j` has one VIRTIO 1.x split virtqueue
//! (§2.7: descriptor table, available ring, used ring, free-running `u16`
//! indices) in memory all cores share. Core `i` is the ring's only producer
//! (the spec's *driver*), core `j` its only consumer (the *device*). The data
//! path uses plain atomic loads and stores with Acquire/Release on the
//! indices and one `fence(SeqCst)` per send (and per batch of give-backs): no
//! locks, no read-modify-write atomics. The crate is `no_std` + `alloc` and knows nothing of the kernel;
//! the machine comes in through [`Notify`].
//!
//! ## Using it
//! Build one [`Bus`] per VM (leak it to `&'static` or keep it in an `Arc`),
//! then every core takes its [`Endpoint`] once; the endpoint's `&mut self`
//! methods make each ring single-producer, single-consumer.
//!
//! ```
//! use intra_vbus::{Bus, Config, CoreId, Envelope, Notify};
//!
//! struct Polling; // the VM wakes rank threads / sends an IPI here
//! impl Notify for Polling {
//!     fn notify(&self, _core: CoreId) {}
//!     fn wait(&self, _core: CoreId) {}
//! }
//!
//! let bus = Bus::new(Config::new(2), Polling).unwrap();
//! let (mut core0, mut core1) = (bus.endpoint(0).unwrap(), bus.endpoint(1).unwrap());
//! let env = Envelope { src_rank: 0, dst_rank: 1, tag: 7, comm: 0, kind: 0 };
//! core0.send(1, env, b"hello").unwrap(); // eager: complete at once
//!
//! let msg = core1.poll().unwrap();
//! assert_eq!(msg.header().env.tag, 7); // match on the header first…
//! let mut buf = [0u8; 16];
//! let n = core1.receive_into(msg, &mut buf).unwrap(); // …then copy once and release
//! assert_eq!(&buf[..n], b"hello");
//! ```
//!
//! ## Eager and rendezvous
//! A message of at most [`Config::eager_max`] bytes (default
//! [`DEFAULT_EAGER_MAX`] = 2 KiB, chosen by measurement, see README.md) is
//! copied into the descriptor's own ring buffer; the send is complete at once.
//! A longer one is sent by reference: the descriptor carries the sender's
//! buffer address and length, the receiver copies once, straight from it into
//! its destination, and gives the descriptor back through the used ring; the
//! sender's [`SendHandle`] completes when that used entry arrives
//! ([`Endpoint::test`]). [`Endpoint::try_isend`] is the non-blocking form
//! (`unsafe`: the buffer must outlive the handle, like `MPI_Isend`);
//! [`Endpoint::send`] the safe blocking one. A full ring is
//! [`SendError::WouldBlock`]; nothing is ever truncated or dropped.
//!
//! ## Receiving, matching, unexpected messages
//! Every message carries a [`Header`]: the sender's [`Envelope`] (source and
//! destination rank, tag, communicator, an MPI-layer `kind`), the length and
//! the [`Protocol`]. [`Endpoint::peek_from`] reads the head's header and
//! leaves it queued; [`Endpoint::poll`] / [`Endpoint::poll_from`] take it as
//! an [`Incoming`], whose payload can be read in place
//! ([`Incoming::payload`]) until [`Endpoint::release`] returns the descriptor
//! (in any order). FIFO holds per core pair.
//!
//! So the MPI layer has both options for an unexpected message: keep the
//! `Incoming` (zero copy; it holds one descriptor of that pair's ring and, for
//! rendezvous, keeps the sender's send incomplete, as MPI allows), or copy the
//! payload into its own unexpected queue and release at once. The intended
//! policy: copy eager messages out (they are small), keep rendezvous ones,
//! but copy them out too once a pair has more than half its descriptors held,
//! so a sender is never starved of descriptors by messages the receiver
//! cannot match yet.
//!
//! ## Ranks and cores
//! Routing is by core; the header carries ranks, which the transport never
//! interprets. Several ranks on one core (cooperative threads) share the
//! core's endpoint. A send to the own core goes to the endpoint's local FIFO
//! queue (a copy into a heap buffer, any size, complete at once; no ring, no
//! other core involved), and `poll` returns it like any other message. The
//! MPI layer may instead match same-core sends directly against posted
//! receives and never call the transport.
//!
//! ## Waiting without lost wake-ups
//! Receivers poll. To sleep, a core calls [`Endpoint::prepare_wait`]: it arms
//! the spec's event index (VIRTIO_F_EVENT_IDX) on every ring it receives on
//! and on the rings it sends on where it waits for a descriptor (a
//! rendezvous in flight or a full ring), executes `fence(SeqCst)` and re-checks
//! all of them; only if nothing arrived may it sleep ([`Notify::wait`]), and
//! [`Endpoint::finish_wait`] parks the event indices again. A publisher (send
//! or release) stores its index, executes `fence(SeqCst)`, and calls
//! [`Notify::notify`] only if it crossed the peer's event index. A send
//! fences before it returns, after its bookkeeping, so the fence seldom waits
//! for the stamp's line; released eager descriptors go back in batches (at the
//! next send, test or wait, or once eight are held) with one index store
//! and one fence per batch. The two
//! fences make this a store-buffering pair: either the sleeper sees the
//! message or the publisher sees the armed index (checked by loom, see
//! `loom_tests.rs`). A polling peer parks its event index half the index
//! space ahead, so it is never notified and costs the sender one cache hit.
//! [`Endpoint::wait_for_work`] packages spin (`spin_polls`) → prepare → wait
//! → finish. The sleeping core must have token semantics: a notify that
//! comes before the wait makes the wait return.
//!
//! ## Memory
//! With `Q` = `queue_size`, `E` = `eager_max` and `⌈x⌉` = `x` rounded up to
//! 64 bytes, each ring (ordered core pair) takes
//!
//! ```text
//! ring(Q, E) = ⌈16·Q⌉ (descriptors) + 64·Q (header lines) + ⌈2·(Q+3)⌉ (avail)
//!            + ⌈8·Q+6⌉ (used) + Q·⌈E⌉ (eager buffers)
//!            + 64 + ⌈8·Q⌉ + 64 (the sender's and the receiver's private state)
//! bus(N)     = N·(N−1) · ring(Q, E)            ([`Config::memory_bytes`])
//! ```
//!
//! | cores | rings | Q=64, E=2 KiB (default ≤ 16 cores) | Q=16, E=1 KiB (default > 16 cores) |
//! |------:|------:|-----------------------------------:|-----------------------------------:|
//! |     2 |     2 |                            275 KB  |                             36 KB  |
//! |     4 |    12 |                            1.7 MB  |                            218 KB  |
//! |     8 |    56 |                            7.7 MB  |                            1.0 MB  |
//! |    64 |  4032 |                            555 MB  |                             73 MB  |
//!
//! Each header has a cache line of its own; an eager payload of at most 20
//! bytes travels in the rest of that line instead of the eager buffer, and the
//! line ends with the stamp that publishes it, so a small message moves one
//! line from core to core (see `virtq.rs`).
//!
//! Every part is cache-line aligned, so what the sender writes (descriptors,
//! headers, avail ring, eager buffers) and what the receiver writes (used
//! ring) never share a line. Up to [`MAX_CORES`] = 64 cores.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

mod bus;
mod config;
mod copy;
mod endpoint;
pub mod floor;
mod header;
mod sync;
mod virtq;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod unit_tests;

pub use bus::{Bus, EndpointError, Notify};
pub use config::{
    Config, ConfigError, DEFAULT_EAGER_MAX, DEFAULT_QUEUE_SIZE, DEFAULT_SPIN_POLLS, LARGE_BUS_CORES,
    MAX_CORES, MAX_QUEUE_SIZE,
};
pub use copy::{copy_payload, copy_streamed, stream_from, STREAM_COPY_MIN};
pub use endpoint::{Endpoint, Incoming, SendError, SendHandle};
pub use header::{Envelope, Header, Protocol};

/// Index of a core (vCPU) of the VM, `0..config.cores`.
pub type CoreId = usize;
