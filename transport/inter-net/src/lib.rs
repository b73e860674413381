//! Toro MPI between VMs: MPI messages framed over one smoltcp TCP connection per VM
//! pair, on virtio-net in the VM (feature `virtio`) or an in-memory segment in tests.
//!
//! Layers, top to bottom:
//! - `node::NetEndpoint`: one rank's `mpi::transport::Transport` for peers in other VMs;
//! - `node::Node`: the VM's smoltcp interface, a TCP connection per peer VM (the VM with
//!   the higher index connects, the lower one listens on `port_base + peer`), behind one
//!   lock shared by the VM's ranks;
//! - `protocol`: chunking, round-robin between (source, destination) pairs, credit flow
//!   control, strict checking of everything received;
//! - `frame`: the 56-byte wire header and its decoder;
//! - `sim`: an in-memory Ethernet segment for host tests; `vm` (feature `virtio`): the
//!   ring-3 virtio-net driver and `vm::start`; `pci` (feature `virtio`): finding and
//!   setting up the device over PCI (q35).
//!
//! Who drives the interface: whichever rank is inside a transport call (it takes the
//! node's lock, polls the NIC, moves bytes for every rank of the VM). No core is given
//! up to a progress thread, and a rank waiting for data is the one that benefits first.
//!
//! Errors: a malformed or unexpected frame, or a peer VM lost while data was in flight
//! to or from it, ends the job through the `Fatal` hook with a message naming the peer
//! VM and its ranks. A peer lost while idle is only an error for a rank that sends to it.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

pub mod frame;
pub mod node;
mod payload;
#[cfg(feature = "virtio")]
pub mod pci;
pub mod protocol;
pub mod sim;
#[cfg(feature = "virtio")]
pub mod vm;

pub use node::{NetConfig, NetEndpoint, Nic, Node, NodeStats, Shared};
