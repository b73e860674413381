//! # intra-vbus: core-to-core messages inside one Toro VM
//!
//! MEMORY_AND_DESIGN_DOCS
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

mod bus;
mod config;
mod endpoint;
mod header;
mod sync;
mod virtq;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod unit_tests;

pub use bus::{Bus, EndpointError, Notify};
pub use config::{
    Config, ConfigError, DEFAULT_EAGER_MAX, DEFAULT_QUEUE_SIZE, DEFAULT_SPIN_POLLS, MAX_CORES,
    MAX_QUEUE_SIZE,
};
pub use endpoint::{Endpoint, Incoming, SendError, SendHandle};
pub use header::{Envelope, Header, Protocol};

/// Index of a core (vCPU) of the VM, `0..config.cores`.
pub type CoreId = usize;
