//! foldhost's end-to-end tests, one module per property, linked into one test binary.
//!
//! Every module links wasmtime and the host; as separate test binaries they cost CI a link
//! each and gigabytes of disk. cargo-nextest still runs every test in its own process, so
//! a test that kills, crashes or exhausts something cannot touch its neighbours.

pub mod certificates;
pub mod pgcluster;
pub mod serve;

mod backup;
mod cli;
mod compile_cache;
mod console;
mod crash;
mod exact;
mod faults;
mod host_faults;
mod hotswap;
mod http;
mod https;
mod image;
mod js;
mod languages;
mod lifecycle;
mod limits;
mod live;
mod multihost;
mod newcomer;
mod openapi;
mod pipeline;
mod poison;
mod postgres_durability;
mod postgres_restart;
mod postgres_restart_under_load;
mod postgres_tls;
mod powerloss;
mod powerloss_serve;
mod python_sdk;
mod read_ahead;
mod resident;
mod runtime;
mod sandbox;
mod shutdown;
mod upcasters;
