//! An aggregate built against `foldhost:plugin@0.1.0`, the contract before
//! upcasters (a frozen copy in `wit/`), using wit-bindgen directly. A host for
//! any later 0.1.y must keep loading and running it: a minor release only adds.
//!
//! It counts `Pinged` events: command `Ping` decides one.

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::Cell;

    wit_bindgen::generate!({ world: "aggregate-plugin" });

    use exports::foldhost::plugin::aggregate::Guest;
    use foldhost::plugin::types::{
        Batch, CommandError, ContentType, Description, NewEvent, PluginKind,
    };

    thread_local! {
        static PINGS: Cell<u64> = const { Cell::new(0) };
    }

    struct OldContract;

    impl Guest for OldContract {
        fn describe() -> Description {
            Description {
                name: "old-contract".to_owned(),
                kind: PluginKind::Aggregate,
                plugin_version: "0.1.0".to_owned(),
                state_schema: 1,
            }
        }

        fn init(snapshot: Option<Vec<u8>>) -> Result<(), String> {
            let pings = match snapshot {
                Some(bytes) => u64::from_le_bytes(
                    bytes
                        .try_into()
                        .map_err(|_| "a snapshot is 8 bytes".to_owned())?,
                ),
                None => 0,
            };
            PINGS.set(pings);
            Ok(())
        }

        fn apply(events: Batch) -> Result<(), String> {
            PINGS.set(PINGS.get() + events.events.len() as u64);
            Ok(())
        }

        fn handle(command: String, _: Vec<u8>) -> Result<Vec<NewEvent>, CommandError> {
            match command.as_str() {
                "Ping" => Ok(vec![NewEvent {
                    event_type: "Pinged".to_owned(),
                    content_type: ContentType::Json,
                    data: b"{}".to_vec(),
                }]),
                other => Err(CommandError::Invalid(format!("unknown command {other}"))),
            }
        }

        fn snapshot() -> Vec<u8> {
            PINGS.get().to_le_bytes().to_vec()
        }

        fn state() -> String {
            format!("{{\"pings\":{}}}", PINGS.get())
        }
    }

    export!(OldContract);
}
