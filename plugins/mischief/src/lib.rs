//! A projection (`mischief`) over the `hostile` category that misbehaves on purpose, for the
//! host's tests of projection failures and query isolation.
//!
//! | event      | when folded                                                  |
//! |------------|--------------------------------------------------------------|
//! | `Ponged`   | behaves: counted                                             |
//! | `Poison`   | panics, unless an `Antidote` was folded before: then counted |
//! | `Antidote` | behaves: later `Poison` events fold                          |
//! | `Venom`    | panics, antidote or not                                      |
//! | `Garbled`  | behaves, but the state's snapshots then do not restore       |
//! | `Stalled`  | behaves, but restoring the state's snapshots then never ends |
//! | `Jammed`   | behaves, but snapshotting the state then panics              |
//!
//! | query      | inside `query`                                                         |
//! |------------|------------------------------------------------------------------------|
//! | `count`    | behaves: `{"pongs", "poisons", "antidotes"}`, and `"garbled"` once set |
//! | `panic`    | panics                                                                 |
//! | `loop`     | spins forever                                                          |
//! | `allocate` | allocates 1 GiB and touches every 4 KiB page                           |
//! | `huge`     | answers a string of `{"mib": n}` MiB                                   |

use std::hint::black_box;

use foldhost_guest::{EventMeta, Projection, Subscription, export_projection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(feature = "broken-init"), derive(Default))]
pub struct Mischief {
    pub pongs: u64,
    pub poisons: u64,
    pub antidotes: u64,
    /// Once `Garbled`, snapshots are bytes `restore` refuses.
    #[serde(default, skip_serializing_if = "is_clear")]
    pub garbled: bool,
    /// Once `Stalled`, snapshots are bytes `restore` spins on.
    #[serde(default, skip_serializing_if = "is_clear")]
    pub stalled: bool,
    /// Once `Jammed`, taking a snapshot panics.
    #[serde(default, skip_serializing_if = "is_clear")]
    pub jammed: bool,
}

fn is_clear(flag: &bool) -> bool {
    !flag
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum HostileEvent {
    Ponged,
    Poison,
    Antidote,
    Venom,
    Garbled,
    Stalled,
    Jammed,
    #[serde(other)]
    Unknown,
}

/// Feature `broken-init`: a build whose blank state cannot be made.
#[cfg(feature = "broken-init")]
impl Default for Mischief {
    fn default() -> Self {
        panic!("mischief: built with broken-init")
    }
}

const GARBLED: &[u8] = b"garbled";
const STALLED: &[u8] = b"stalled";

fn spin() -> ! {
    let mut turns = 0u64;
    loop {
        turns = black_box(turns.wrapping_add(1));
    }
}

impl Projection for Mischief {
    const NAME: &'static str = "mischief";
    const VERSION: &'static str = if cfg!(feature = "broken-init") {
        "1.0.1"
    } else {
        "1.0.0"
    };
    type Event = HostileEvent;

    fn subscription() -> Subscription {
        Subscription::categories(["hostile"])
    }

    fn apply(&mut self, event: HostileEvent, meta: &EventMeta<'_>) {
        match event {
            HostileEvent::Ponged => self.pongs += 1,
            HostileEvent::Poison if self.antidotes == 0 => {
                panic!(
                    "mischief: Poison at position {} and no antidote",
                    meta.position
                )
            }
            HostileEvent::Poison => self.poisons += 1,
            HostileEvent::Antidote => self.antidotes += 1,
            HostileEvent::Venom => panic!("mischief: Venom at position {}", meta.position),
            HostileEvent::Garbled => self.garbled = true,
            HostileEvent::Stalled => self.stalled = true,
            HostileEvent::Jammed => self.jammed = true,
            HostileEvent::Unknown => {}
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        assert!(!self.jammed, "mischief: snapshotting a jammed state");
        match (self.garbled, self.stalled) {
            (true, _) => GARBLED.to_vec(),
            (_, true) => STALLED.to_vec(),
            _ => serde_json::to_vec(self).expect("mischief's state is JSON"),
        }
    }

    fn restore(snapshot: &[u8]) -> Result<Self, String> {
        if snapshot == STALLED {
            spin();
        }
        serde_json::from_slice(snapshot).map_err(|e| format!("mischief: {e}"))
    }

    fn query(&self, name: &str, args: Value) -> Result<Value, String> {
        match name {
            "count" => Ok(json!(self)),
            "panic" => panic!("mischief: panicking in a query on purpose"),
            "loop" => spin(),
            "allocate" => {
                let mut block = vec![0u8; 1 << 30];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                Err(format!(
                    "allocated {} bytes: memory is not limited",
                    black_box(&block).len()
                ))
            }
            "huge" => {
                let mib = args["mib"].as_u64().unwrap_or(16) as usize;
                Ok(Value::String("x".repeat(mib << 20)))
            }
            _ => Err(format!("unknown query `{name}`")),
        }
    }
}

export_projection!(Mischief);

#[cfg(test)]
mod tests {
    use foldhost_guest::{EventMeta, Projection};

    use super::{HostileEvent, Mischief};

    const META: EventMeta<'static> = EventMeta {
        stream: "hostile-1",
        version: 1,
        position: 1,
        recorded_at: 0,
    };

    #[test]
    fn poison_folds_only_after_an_antidote() {
        let mut state = Mischief::default();
        state.apply(HostileEvent::Ponged, &META);
        state.apply(HostileEvent::Antidote, &META);
        state.apply(HostileEvent::Poison, &META);
        assert_eq!((state.pongs, state.antidotes, state.poisons), (1, 1, 1));
        assert_eq!(
            state.query("count", serde_json::Value::Null).unwrap()["poisons"],
            1
        );
    }

    #[test]
    fn snapshots_restore_until_garbled_or_stalled() {
        let mut state = Mischief::default();
        state.apply(HostileEvent::Ponged, &META);
        assert_eq!(Mischief::restore(&state.snapshot()), Ok(state.clone()));
        let mut garbled = state.clone();
        garbled.apply(HostileEvent::Garbled, &META);
        assert!(Mischief::restore(&garbled.snapshot()).is_err());
        state.apply(HostileEvent::Stalled, &META);
        assert_eq!(state.snapshot(), super::STALLED);
    }

    #[test]
    #[should_panic(expected = "no antidote")]
    fn poison_without_an_antidote_panics() {
        Mischief::default().apply(HostileEvent::Poison, &META);
    }
}
