//! What a component declares it will allocate — its core instances, linear
//! memories and tables with their initial sizes — read from the binary before
//! anything is instantiated, so that a component the sandbox could never hold
//! is refused at load with the reason.

use wasmtime::wasmparser::{Instance, Parser, Payload};

use super::limits::{Limits, show_size};
use super::sandbox::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, TABLE_ELEMENT_BYTES};

/// The allocations a component's core modules declare, counted once per
/// definition. A module instantiated twice allocates twice; the store's
/// budget (see [`StoreBudget`](super::sandbox::StoreBudget)) counts those at
/// run time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Core instances the component creates.
    pub instances: usize,
    pub memories: usize,
    pub tables: usize,
    /// Initial bytes of every memory plus the host's cost of every table's
    /// initial elements.
    pub initial_bytes: u64,
}

impl Footprint {
    /// Reads the footprint of a component (or core module) binary.
    pub fn of(bytes: &[u8]) -> Result<Footprint, String> {
        let mut footprint = Footprint::default();
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(|e| format!("not a valid WebAssembly component: {e}"))? {
                Payload::InstanceSection(instances) => {
                    for instance in instances {
                        let instance = instance.map_err(|e| e.to_string())?;
                        footprint.instances +=
                            usize::from(matches!(instance, Instance::Instantiate { .. }));
                    }
                }
                Payload::MemorySection(memories) => {
                    for memory in memories {
                        let memory = memory.map_err(|e| e.to_string())?;
                        let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                        footprint.memories += 1;
                        footprint.initial_bytes = footprint
                            .initial_bytes
                            .saturating_add(memory.initial.saturating_mul(page));
                    }
                }
                Payload::TableSection(tables) => {
                    for table in tables {
                        let table = table.map_err(|e| e.to_string())?;
                        footprint.tables += 1;
                        footprint.initial_bytes = footprint.initial_bytes.saturating_add(
                            table.ty.initial.saturating_mul(TABLE_ELEMENT_BYTES as u64),
                        );
                    }
                }
                _ => {}
            }
        }
        Ok(footprint)
    }

    /// Refuses a footprint over the sandbox's counts or over `limits.memory`.
    pub fn check(&self, limits: &Limits) -> Result<(), String> {
        for (what, count, max) in [
            ("core instances", self.instances, MAX_INSTANCES),
            ("linear memories", self.memories, MAX_MEMORIES),
            ("tables", self.tables, MAX_TABLES),
        ] {
            if count > max {
                return Err(format!(
                    "declares {count} {what}; a plugin may have at most {max}"
                ));
            }
        }
        if self.initial_bytes > limits.memory as u64 {
            return Err(format!(
                "declares {} of initial memories and tables; its memory limit is {}",
                show_size(usize::try_from(self.initial_bytes).unwrap_or(usize::MAX)),
                show_size(limits.memory)
            ));
        }
        Ok(())
    }
}
