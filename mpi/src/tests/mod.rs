//! Host tests: ranks as std threads over the in-memory transport.

mod collectives;
mod errors;
mod point_to_point;
