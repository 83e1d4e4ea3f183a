//! An aggregate built against `foldhost:plugin@0.2.0` (a copy of the contract
//! in `wit/` with only the version bumped), using wit-bindgen directly rather
//! than the SDK. A host for 0.1 must refuse to load it: semver treats 0.1 →
//! 0.2 as breaking, so it does not export `foldhost:plugin/aggregate@0.1.x`.
//! It logs, as SDK-built plugins do, so it also imports
//! `foldhost:plugin/host@0.2.0`: the refusal must still name the contract.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "aggregate-plugin" });

    use exports::foldhost::plugin::aggregate::Guest;
    use foldhost::plugin::host::{Level, log};
    use foldhost::plugin::types::{Batch, CommandError, Description, NewEvent, PluginKind};

    struct WrongContract;

    impl Guest for WrongContract {
        fn describe() -> Description {
            Description {
                name: "wrong-contract".to_owned(),
                kind: PluginKind::Aggregate,
                plugin_version: "0.2.0".to_owned(),
                state_schema: 1,
            }
        }

        fn init(_: Option<Vec<u8>>) -> Result<(), String> {
            Ok(())
        }

        fn apply(_: Batch) -> Result<(), String> {
            Ok(())
        }

        fn handle(_: String, _: Vec<u8>) -> Result<Vec<NewEvent>, CommandError> {
            log(Level::Info, "wrong-contract decides nothing");
            Err(CommandError::Rejected(
                "wrong-contract decides nothing".to_owned(),
            ))
        }

        fn snapshot() -> Vec<u8> {
            Vec::new()
        }

        fn state() -> String {
            "{}".to_owned()
        }
    }

    export!(WrongContract);
}
