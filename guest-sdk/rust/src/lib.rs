//! Write foldhost plugins — aggregates, projections and upcasters — as ordinary
//! Rust crates.
//!
//! A plugin is a WebAssembly component implementing one world of the contract
//! `wit/foldhost.wit` (`foldhost:plugin@0.1.2`). This crate hides the WIT
//! plumbing: implement [`Aggregate`] or [`Projection`] for your state type (or
//! [`Upcaster`] for a type rewriting old event shapes) and invoke
//! [`export_aggregate!`], [`export_projection!`] or [`export_upcaster!`] once.
//!
//! # An aggregate
//!
//! ```
//! use foldhost_guest::{Aggregate, Rejection, export_aggregate};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct Counter {
//!     value: u64,
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! pub enum CounterEvent {
//!     Added { by: u64 },
//!     Reset,
//! }
//!
//! #[derive(Deserialize)]
//! pub enum CounterCommand {
//!     Add { by: u64 },
//!     Reset,
//! }
//!
//! impl Aggregate for Counter {
//!     const NAME: &'static str = "counter";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     type Event = CounterEvent;
//!     type Command = CounterCommand;
//!
//!     fn apply(&mut self, event: CounterEvent) {
//!         match event {
//!             CounterEvent::Added { by } => self.value = self.value.saturating_add(by),
//!             CounterEvent::Reset => self.value = 0,
//!         }
//!     }
//!
//!     fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, Rejection> {
//!         match command {
//!             CounterCommand::Add { by: 0 } => Err(Rejection::new("nothing to add")),
//!             CounterCommand::Add { by } => Ok(vec![CounterEvent::Added { by }]),
//!             CounterCommand::Reset => Ok(vec![CounterEvent::Reset]),
//!         }
//!     }
//! }
//!
//! export_aggregate!(Counter);
//! ```
//!
//! Events and commands are enums in serde's default (externally tagged)
//! representation: variant name = type, payload = JSON data, renames respected
//! (see [`codec`]). The host sends a command as `("Add", br#"{"by":2}"#)`; a
//! decoding failure answers `command-error::invalid` with serde's message, a
//! [`Rejection`] answers `command-error::rejected`. Stored events, JSON or
//! binary (postcard payloads), are decoded the same way; an undecodable event
//! makes `apply` return an error naming its position and type, and leaves the
//! state untouched. Snapshots are the postcard encoding of the state,
//! `init(None)` starts from `Default`.
//!
//! A [`Projection`] works alike, with a [`Subscription`], an [`EventMeta`] for
//! every event and named JSON queries. An [`Upcaster`] maps an enum of old
//! event shapes to zero or more current events.
//!
//! Write log lines with the [`log`] macros. A panic traps the instance; its
//! message is logged at error level first.
//!
//! # Building a plugin
//!
//! ```sh
//! foldhost plugins new my-plugin --lang rust   # a project with this SDK vendored
//! foldhost plugins build my-plugin             # → my-plugin/my-plugin.wasm
//! ```
//!
//! `plugins build` runs `cargo build --release --target wasm32-unknown-unknown`
//! (adding the target with rustup when missing), turns the core module into a
//! component with `wit-component` (the library behind `wasm-tools component
//! new`) and checks it against the contract. The host also accepts the plain
//! core module and componentizes it on load. In this workspace the
//! `foldhost-plugins` crate builds every example the same way with the
//! `plugin` profile (fast folds, LTO, no debug info). The target is
//! `wasm32-unknown-unknown`, not `wasm32-wasip2`: plugins must not do I/O, and
//! on that target std has no WASI imports, so the component imports nothing
//! but `foldhost:plugin/host`. No adapter is needed.
//!
//! The export macros expand to nothing on non-wasm targets: the `rlib` builds
//! natively, so the host can test and benchmark the same logic without wasm,
//! using the [`codec`] functions to turn stored `(type, data)` into events.
//!
//! # The heap
//!
//! On wasm32 this crate sets the plugin's global allocator (feature `lean-heap`, on by
//! default): talc, starting at `__heap_base` in memory the plugin already has and growing a
//! 4 KiB page at a time, so a small state costs no fresh page of resident memory per live
//! instance (std's dlmalloc wrote two). A plugin that sets its own `#[global_allocator]`
//! depends on this crate with `default-features = false`.
//!
//! # One world per plugin
//!
//! `wit-bindgen` describes a world to `wit-component` in a `component-type:*`
//! custom section, and `wit-component` merges every such section in a module
//! and then requires the exports of all of them. This crate generates bindings
//! for *every* world, so if all full sections reached a plugin, an aggregate
//! would be asked for projection exports too — and whether an unreferenced
//! section is linked depends on codegen units and LTO, so "usually works" is
//! not good enough. Cargo features per world do not help either: features
//! unify when several plugins build in one cargo invocation.
//!
//! Instead the bindings use wit-bindgen's `pub_export_macro` mode, made for
//! exactly this: this crate embeds only *imports-only* copies of the
//! worlds (harmless: `wit-component` drops unused imports), and the full world
//! with its exports is embedded by the world's `export!` macro, which only
//! the `export_*!` macros invoke — in the plugin crate.
//! So a plugin carries exactly one world's exports whatever the linker keeps,
//! and stock `wasm-tools component new` works without any section surgery.
//!
//! # Why no WASI
//!
//! A fold must be deterministic: replaying the same events must give the same
//! state. Clocks, randomness and I/O would break that, so the contract offers
//! none, and building for `wasm32-unknown-unknown` keeps std from importing
//! them.

#![warn(missing_docs)]

mod aggregate;
mod batch;
// Generated by wit-bindgen: documented only where the WIT is.
#[allow(missing_docs)]
mod bindings;
pub mod codec;
#[cfg(all(target_arch = "wasm32", feature = "lean-heap"))]
mod heap;
pub mod log;
#[cfg(any(target_arch = "wasm32", test))]
mod memcmp;
mod projection;
mod runtime;
mod state;
pub mod text;
mod upcaster;
mod words;

pub use aggregate::{Aggregate, Rejection};
pub use projection::{EventMeta, Projection, Subscription};
pub use upcaster::Upcaster;

/// Used by the export macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::{aggregate, projection, upcaster};
    pub use crate::runtime::{AggregateSlot, ProjectionSlot, UpcasterSlot};
}

/// The body of [`export_aggregate!`] and [`export_projection!`]: a state cell of `$ty`, created
/// with its default on first use, behind the slot trait `$slot` (whose associated type is
/// `$kind`), exported as the world `$world`. Expands to nothing unless the target is `wasm32`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_stateful {
    ($ty:ty, $slot:ident, $kind:ident, $world:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct FoldhostPlugin;

            impl $crate::__private::$slot for FoldhostPlugin {
                type $kind = $ty;

                fn with<R>(f: impl FnOnce(&mut $ty) -> R) -> R {
                    STATE.with_borrow_mut(|state| {
                        f(state.get_or_insert_with(::core::default::Default::default))
                    })
                }
            }

            $crate::__private::$world::export!(
                FoldhostPlugin with_types_in $crate::__private::$world
            );
        };
    };
}
