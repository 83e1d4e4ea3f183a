//! Turning a core module from `cargo build --target wasm32-unknown-unknown`
//! into a component, as `wasm-tools component new` does.

use std::borrow::Cow;

use anyhow::Context;
use wasmparser::Parser;

/// Whether `bytes` is a core WebAssembly module (not a component).
pub fn is_core_module(bytes: &[u8]) -> bool {
    Parser::is_core_wasm(bytes)
}

/// Wraps a core module in a component using the world described by its
/// `component-type:*` custom sections (which wit-bindgen embeds).
pub fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|encoder| encoder.validate(true).encode())
        .context("turning the core module into a component")
}

/// `bytes` as a component: a core module is componentized, anything else is
/// returned as it is.
pub fn to_component(bytes: &[u8]) -> anyhow::Result<Cow<'_, [u8]>> {
    if is_core_module(bytes) {
        componentize(bytes).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(bytes))
    }
}
