//! Host tests: ranks as std threads over the in-memory transport.

mod collectives;
mod point_to_point;
