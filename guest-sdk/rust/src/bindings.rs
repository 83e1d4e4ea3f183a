//! Bindings for the three worlds of `wit/foldhost.wit`.
//!
//! Both are generated with `pub_export_macro`, which makes wit-bindgen embed
//! only an *imports-only* copy of each world in this crate. The full world,
//! exports included, is embedded by the world's `export!` macro in the crate
//! that invokes it, i.e. by `export_aggregate!`, `export_projection!` or
//! `export_upcaster!` in the plugin. A plugin therefore never carries another
//! world's exports, however
//! the linker or LTO treats this crate's sections (see the crate docs).

/// The `packed-aggregate-plugin` world: `aggregate-plugin` plus its packed fold.
pub mod aggregate {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "packed-aggregate-plugin",
        pub_export_macro: true,
    });
}

/// The `packed-projection-plugin` world, sharing the `types` and `host` bindings.
pub mod projection {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "packed-projection-plugin",
        pub_export_macro: true,
        with: {
            "foldhost:plugin/types@0.1.2": crate::bindings::types,
            "foldhost:plugin/host@0.1.2": crate::bindings::host,
        },
    });
}

/// The `upcaster-plugin` world, sharing the `types` and `host` bindings.
pub mod upcaster {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "upcaster-plugin",
        pub_export_macro: true,
        with: {
            "foldhost:plugin/types@0.1.2": crate::bindings::types,
            "foldhost:plugin/host@0.1.2": crate::bindings::host,
        },
    });
}

pub use aggregate::foldhost::plugin::{host, types};
