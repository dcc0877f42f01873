//! Fault testing (DESIGN.md §10): workloads record histories of real operations while a
//! nemesis injects faults, and the [`checker`] decides whether what clients saw is allowed by
//! the consistency contract (§6).

pub mod checker;
