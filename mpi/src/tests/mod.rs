//! Host tests: ranks as std threads over the in-memory transport.

mod point_to_point;
