//! Harnesses shared by foldhost's end-to-end tests.

pub mod bench;
pub mod gated_disk;
pub mod simulated_disk;
pub mod simulated_fs;
