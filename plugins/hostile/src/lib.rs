//! An aggregate (`hostile`) whose commands misbehave on purpose, for the
//! host's sandboxing tests.
//!
//! | command    | inside `handle`                                         |
//! |------------|---------------------------------------------------------|
//! | `Ping`     | behaves: emits `Ponged`                                 |
//! | `Loop`     | spins forever (needs fuel or epoch interruption)        |
//! | `Allocate` | allocates 1 GiB and touches every 4 KiB page            |
//! | `Panic`    | panics (a trap; the message is logged first)            |
//! | `Recurse`  | recurses without bound until the stack overflows        |
//! | `Poison`   | behaves: emits `Poison`, whose `apply` panics           |
//! | `Flood`    | emits `events` events of `bytes` bytes each             |
//! | `Bloat`    | emits `Bloated`: the state then renders as `bytes` bytes |
//! | `Chatter`  | logs `lines` lines of `bytes` bytes each, then pongs    |
//! | `Jam`      | emits `Jammed`: snapshots of the state then panic       |
//! | `Garble`   | emits `Garbled`: snapshots of the state then do not restore |
//!
//! `Allocate` and `Recurse` reject the command if they ever return, which
//! means the host failed to stop them. Attacks Rust cannot express (several
//! memories, a huge `table.grow`) are in the WebAssembly text of `wat/`.

use std::hint::black_box;

use foldhost_guest::{Aggregate, Rejection, export_aggregate, log};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hostile {
    /// How many `Ponged` events were applied.
    pub pongs: u64,
    /// Bytes the rendered state is padded to, once `Bloated`.
    pub bloat: u32,
    /// Once `Jammed`, taking a snapshot panics (a trap).
    #[serde(default, serialize_with = "jam")]
    pub jammed: bool,
    /// Once `Garbled`, snapshots leave this field out and so no longer restore (the SDK's
    /// snapshot encoding reads fields by position): an encoding that does not round-trip.
    #[serde(default, skip_serializing_if = "is_set")]
    pub garbled: bool,
}

fn is_set(flag: &bool) -> bool {
    *flag
}

fn jam<S: serde::Serializer>(jammed: &bool, serializer: S) -> Result<S::Ok, S::Error> {
    assert!(!jammed, "hostile: snapshotting a jammed state");
    serializer.serialize_bool(*jammed)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostileEvent {
    Ponged,
    /// Applying it panics, so replaying a stream that holds it traps.
    Poison,
    /// Filler of one `Flood`.
    Flooded(String),
    Bloated {
        bytes: u32,
    },
    Jammed,
    Garbled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostileCommand {
    Ping,
    Loop,
    Allocate,
    Panic,
    Recurse,
    Poison,
    Flood { events: u32, bytes: u32 },
    Bloat { bytes: u32 },
    Chatter { lines: u32, bytes: u32 },
    Jam,
    Garble,
}

const GIB: usize = 1 << 30;

fn spin() -> ! {
    let mut turns = 0u64;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

fn allocate() -> Rejection {
    let mut block = vec![0u8; GIB];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&block);
    Rejection::new("allocated and touched 1 GiB: memory is not limited")
}

/// Each frame keeps 256 bytes alive across the call, so it cannot become a loop.
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(depth) == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[31])
}

impl Aggregate for Hostile {
    const NAME: &'static str = if cfg!(feature = "as-bank") {
        "bank"
    } else if cfg!(feature = "as-upcaster") {
        "bank-upcast-v2"
    } else {
        "hostile"
    };
    const VERSION: &'static str = "1.0.0";
    type Event = HostileEvent;
    type Command = HostileCommand;

    fn apply(&mut self, event: HostileEvent) {
        match event {
            HostileEvent::Ponged => self.pongs += 1,
            HostileEvent::Poison => panic!("hostile: applied a Poison event"),
            HostileEvent::Flooded(_) => {}
            HostileEvent::Bloated { bytes } => self.bloat = bytes,
            HostileEvent::Jammed => self.jammed = true,
            HostileEvent::Garbled => self.garbled = true,
        }
    }

    fn handle(&self, command: HostileCommand) -> Result<Vec<HostileEvent>, Rejection> {
        match command {
            HostileCommand::Ping => Ok(vec![HostileEvent::Ponged]),
            HostileCommand::Loop => spin(),
            HostileCommand::Allocate => Err(allocate()),
            HostileCommand::Panic => panic!("hostile: panicking on purpose"),
            HostileCommand::Recurse => Err(Rejection::new(format!(
                "recursion returned {}: the stack is not limited",
                recurse(0)
            ))),
            HostileCommand::Poison => Ok(vec![HostileEvent::Poison]),
            HostileCommand::Flood { events, bytes } => Ok((0..events)
                .map(|_| HostileEvent::Flooded("x".repeat(bytes as usize)))
                .collect()),
            HostileCommand::Bloat { bytes } => Ok(vec![HostileEvent::Bloated { bytes }]),
            HostileCommand::Jam => Ok(vec![HostileEvent::Jammed]),
            HostileCommand::Garble => Ok(vec![HostileEvent::Garbled]),
            HostileCommand::Chatter { lines, bytes } => {
                let line = "x".repeat(bytes as usize);
                for _ in 0..lines {
                    log::info!("{line}");
                }
                Ok(vec![HostileEvent::Ponged])
            }
        }
    }

    fn state_json(&self) -> String {
        format!(
            r#"{{"pongs":{},"bloat":"{}"}}"#,
            self.pongs,
            "x".repeat(self.bloat as usize)
        )
    }
}

export_aggregate!(Hostile);

#[cfg(test)]
mod tests {
    use foldhost_guest::Aggregate;

    use super::{Hostile, HostileCommand, HostileEvent};

    #[test]
    fn well_behaved_commands() {
        let mut state = Hostile::default();
        assert_eq!(
            state.handle(HostileCommand::Ping),
            Ok(vec![HostileEvent::Ponged])
        );
        state.apply(HostileEvent::Ponged);
        assert_eq!(state.pongs, 1);
        assert_eq!(
            state.handle(HostileCommand::Poison),
            Ok(vec![HostileEvent::Poison])
        );
        let flood = state.handle(HostileCommand::Flood {
            events: 3,
            bytes: 2,
        });
        assert_eq!(flood, Ok(vec![HostileEvent::Flooded("xx".into()); 3]));
        state.apply(HostileEvent::Bloated { bytes: 3 });
        assert_eq!(state.state_json(), r#"{"pongs":1,"bloat":"xxx"}"#);
    }

    #[test]
    #[should_panic(expected = "jammed")]
    fn a_jammed_state_panics_when_snapshotted() {
        let mut state = Hostile::default();
        state.apply(HostileEvent::Jammed);
        state.snapshot();
    }

    #[test]
    fn a_garbled_state_snapshots_into_bytes_that_do_not_restore() {
        let mut state = Hostile::default();
        assert_eq!(Hostile::restore(&state.snapshot()), Ok(state.clone()));
        state.apply(HostileEvent::Garbled);
        assert!(Hostile::restore(&state.snapshot()).is_err());
    }

    #[test]
    #[should_panic(expected = "Poison")]
    fn poison_panics_when_applied() {
        Hostile::default().apply(HostileEvent::Poison);
    }
}
