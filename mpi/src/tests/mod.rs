//! Host tests: ranks as std threads, over the in-memory transport and again over
//! the real intra-vbus rings (`testing::over_vbus`). Each suite module takes its
//! harness from `super::harness`.

mod errors;

#[path = "."]
mod in_memory {
    pub(crate) use crate::testing as harness;
    mod collectives;
    mod derive;
    mod point_to_point;
}

#[path = "."]
mod over_vbus {
    pub(crate) use crate::testing::over_vbus as harness;
    mod collectives;
    mod derive;
    mod point_to_point;
    #[path = "over_vbus/shared_cores.rs"]
    mod shared_cores;
    #[path = "over_vbus/shm.rs"]
    mod shm;
}
