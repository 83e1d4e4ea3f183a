//! The `{{name}}` aggregate: a counter (streams `{{name}}-{id}`).
//!
//! `foldhost plugins build` turns this crate into `{{name}}.wasm`.

use foldhost_guest::{Aggregate, Rejection, export_aggregate};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Counter {
    value: u64,
}

#[derive(Serialize, Deserialize)]
pub enum CounterEvent {
    Added { by: u64 },
    Reset,
}

#[derive(Deserialize)]
pub enum CounterCommand {
    Add { by: u64 },
    Reset,
}

impl Aggregate for Counter {
    const NAME: &'static str = "{{name}}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Event = CounterEvent;
    type Command = CounterCommand;

    fn apply(&mut self, event: CounterEvent) {
        match event {
            CounterEvent::Added { by } => self.value = self.value.saturating_add(by),
            CounterEvent::Reset => self.value = 0,
        }
    }

    fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, Rejection> {
        match command {
            CounterCommand::Add { by: 0 } => Err(Rejection::new("nothing to add")),
            CounterCommand::Add { by } => Ok(vec![CounterEvent::Added { by }]),
            CounterCommand::Reset => Ok(vec![CounterEvent::Reset]),
        }
    }
}

export_aggregate!(Counter);
