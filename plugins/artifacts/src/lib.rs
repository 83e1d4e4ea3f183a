//! The workspace's plugins, built as WebAssembly components.
//!
//! The build script compiles every Rust plugin crate for
//! `wasm32-unknown-unknown` (profile `plugin`) and componentizes it, and
//! builds the Python and JavaScript examples with componentize-py and
//! componentize-qjs (installed on first use, builds cached by input fingerprint), so depending on this crate is all a
//! test or benchmark needs to get the components:
//!
//! ```no_run
//! let bytes = std::fs::read(foldhost_plugins::path(foldhost_plugins::BANK_ACCOUNT)).unwrap();
//! ```

use std::io;
use std::path::{Path, PathBuf};

/// Aggregate: bank accounts (streams `bank-account-{id}`).
pub const BANK_ACCOUNT: &str = "bank-account";
/// Projection over `bank-account`: open accounts, total balance, deposits per day, top balances.
pub const BANK_ANALYTICS: &str = "bank-analytics";
/// Aggregate: shopping carts (streams `shopping-cart-{id}`).
pub const SHOPPING_CART: &str = "shopping-cart";
/// `bank-analytics` built with feature `v2`: version 2.0.0, state schema 2,
/// tracks the largest single deposit. For hot-swap tests.
pub const BANK_ANALYTICS_V2: &str = "bank-analytics-v2";
/// `bank-account` built with feature `v2`: version 1.1.0, same behaviour. A different
/// build of the same aggregate, for hot-swap tests (re-uploading identical bytes is a no-op).
pub const BANK_ACCOUNT_V2: &str = "bank-account-v2";
/// Aggregate `hostile`: commands that loop, exhaust memory, panic or overflow
/// the stack, a `Ping` that still works afterwards, and a `Poison` event whose
/// apply panics.
pub const HOSTILE: &str = "hostile";
/// Aggregate `hoarder`, written in WebAssembly text: `GrowTable` grows a table by
/// 2^31 elements, `GrowMemories` grows each of its two memories by 56 MiB; `Ping` behaves.
pub const HOARDER: &str = "hoarder";
/// `hoarder` declaring five linear memories: more than a plugin may have.
pub const HOARDER_MEMORIES: &str = "hoarder-memories";
/// `hoarder` declaring a table of 10 million elements: more than its memory limit.
pub const HOARDER_TABLE: &str = "hoarder-table";
/// `hoarder` declaring a 64-bit table whose `table.grow` overflows, in a loop that grows and
/// writes a memory at start: the host must refuse it at load (this engine has no memory64).
pub const HOARDER_TABLE64: &str = "hoarder-table64";
/// An aggregate built against `foldhost:plugin@0.2.0`; a 0.1 host must reject it.
pub const WRONG_CONTRACT: &str = "wrong-contract";
/// Projection `mischief` over the `hostile` category: queries that panic, loop, exhaust
/// memory or answer too much, and a `Poison` event it cannot fold until an `Antidote` came.
pub const MISCHIEF: &str = "mischief";
/// `bank-analytics` built with feature `lenient` (version 1.0.1): a fix that counts a deposit
/// whose amount is not a number as 0 instead of failing on it.
pub const BANK_ANALYTICS_LENIENT: &str = "bank-analytics-lenient";
/// `mischief` built with feature `broken-init` (version 1.0.1): its blank state panics, so
/// it can never start.
pub const MISCHIEF_BROKEN_INIT: &str = "mischief-broken-init";
/// `hostile` built with feature `as-bank`: it describes itself as `bank`, whose streams would
/// include `bank-account`'s. For the name-clash tests.
pub const HOSTILE_AS_BANK: &str = "hostile-as-bank";
/// `hostile` built with feature `as-upcaster`: an aggregate named `bank-upcast-v2`, like the
/// upcaster [`BANK_UPCAST_V2`]. For replacing a plugin with one of another kind.
pub const HOSTILE_AS_UPCASTER: &str = "hostile-as-upcaster";

/// `bank-account` in TypeScript (`plugins/js/bank-account`): a drop-in
/// replacement for the Rust one, same plugin name, events, commands and state.
pub const BANK_ACCOUNT_JS: &str = "bank-account-js";
/// `bank-analytics` in JavaScript (`plugins/js/bank-analytics`): same name, state and queries.
pub const BANK_ANALYTICS_JS: &str = "bank-analytics-js";
/// Aggregate `hostile-js` in JavaScript: commands that throw, read the clock,
/// loop, exhaust memory or recurse, and a `Poisoned` event whose apply throws.
pub const HOSTILE_JS: &str = "hostile-js";
/// `plugins/python/bank-account`: the Python twin of [`BANK_ACCOUNT`] (same
/// name, events, commands and state JSON).
pub const BANK_ACCOUNT_PYTHON: &str = "bank-account-python";
/// `plugins/python/bank-analytics`: the Python twin of [`BANK_ANALYTICS`].
pub const BANK_ANALYTICS_PYTHON: &str = "bank-analytics-python";
/// Aggregate `python-hostile`: Python handlers that raise, read the clock or
/// randomness, exit or loop, and a `Ping` that still works afterwards.
pub const HOSTILE_PYTHON: &str = "hostile-python";

/// Upcaster: splits the first `bank-account` shape, `OpenedWithDeposit`, into
/// the second, `AccountOpened` + `Credited`.
pub const BANK_UPCAST_V1: &str = "bank-upcast-v1";
/// Upcaster: the second `bank-account` shape into the current one
/// (`AccountOpened` → `Opened`, `Credited` → `Deposited`).
pub const BANK_UPCAST_V2: &str = "bank-upcast-v2";
/// Upcaster that panics on `Poison` events and loops on `Spin` events of `bank-account`.
pub const HOSTILE_UPCASTER: &str = "hostile-upcaster";
/// An aggregate built against the first contract, `foldhost:plugin@0.1.0`; 0.1 hosts load it.
pub const OLD_CONTRACT: &str = "old-contract";

/// The example plugins, as served by `foldhost serve --plugins DIR`.
pub const EXAMPLES: &[&str] = &[BANK_ACCOUNT, BANK_ANALYTICS, SHOPPING_CART];
/// Plugins that exist only for tests.
pub const TEST_ARTIFACTS: &[&str] = &[
    BANK_ANALYTICS_V2,
    BANK_ACCOUNT_V2,
    HOSTILE,
    HOARDER,
    HOARDER_MEMORIES,
    HOARDER_TABLE,
    HOARDER_TABLE64,
    WRONG_CONTRACT,
    MISCHIEF,
    BANK_ANALYTICS_LENIENT,
    MISCHIEF_BROKEN_INIT,
    HOSTILE_AS_BANK,
    HOSTILE_AS_UPCASTER,
    OLD_CONTRACT,
    HOSTILE_UPCASTER,
];
/// The example upcasters, for journals holding old `bank-account` event shapes (not among
/// the [`EXAMPLES`]: load them where such events are).
pub const UPCASTERS: &[&str] = &[BANK_UPCAST_V1, BANK_UPCAST_V2];
/// The examples in other languages: same plugin names as [`EXAMPLES`], so
/// never served beside them, and their test plugins.
pub const OTHER_LANGUAGES: &[&str] = &[
    BANK_ACCOUNT_PYTHON,
    BANK_ANALYTICS_PYTHON,
    HOSTILE_PYTHON,
    BANK_ACCOUNT_JS,
    BANK_ANALYTICS_JS,
    HOSTILE_JS,
];

/// The directory holding every `<name>.wasm`.
pub fn dir() -> &'static Path {
    Path::new(env!("OUT_DIR"))
}

/// The component file of the plugin `name` (one of [`EXAMPLES`], [`OTHER_LANGUAGES`] or
/// [`TEST_ARTIFACTS`]).
pub fn path(name: &str) -> PathBuf {
    dir().join(format!("{name}.wasm"))
}

/// The core module of [`BANK_ACCOUNT`], as `cargo build --target wasm32-unknown-unknown`
/// left it, before componentizing.
pub fn bank_account_core_module() -> PathBuf {
    dir().join(format!("{BANK_ACCOUNT}.core.wasm"))
}

/// Copies the next builds of two examples, [`BANK_ANALYTICS_V2`] and [`BANK_ACCOUNT_V2`], into
/// `to/v2/` under their plugins' names (`bank-analytics.wasm`, `bank-account.wasm`), for
/// trying a hot swap; returns the new files.
pub fn copy_next_versions(to: &Path) -> io::Result<Vec<PathBuf>> {
    let v2 = to.join("v2");
    std::fs::create_dir_all(&v2)?;
    [
        (BANK_ANALYTICS_V2, BANK_ANALYTICS),
        (BANK_ACCOUNT_V2, BANK_ACCOUNT),
    ]
    .into_iter()
    .map(|(build, plugin)| {
        let target = v2.join(format!("{plugin}.wasm"));
        std::fs::copy(path(build), &target)?;
        Ok(target)
    })
    .collect()
}

/// Copies the [`EXAMPLES`] into `to` (created if missing); returns the new files.
pub fn copy_examples(to: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(to)?;
    EXAMPLES
        .iter()
        .map(|name| {
            let target = to.join(format!("{name}.wasm"));
            std::fs::copy(path(name), &target)?;
            Ok(target)
        })
        .collect()
}
