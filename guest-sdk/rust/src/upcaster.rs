//! Upcasters: stored events of old shapes, rewritten into current ones on their way to plugins.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::projection::{EventMeta, Subscription};

/// Rewrites stored events of old shapes into the current ones, so aggregates and projections
/// only need to understand the current shape. Stored events never change: the host runs the
/// upcaster on every path that feeds a plugin.
///
/// `Old` is an enum of the old shapes, `New` one of the current events, both mapped from
/// `(type, data)` as described in [`codec`](crate::codec). The host only calls the upcaster
/// for events matching [`handles`](Self::handles) (list the old event types there); every
/// other event passes by unchanged.
///
/// ```
/// use foldhost_guest::{EventMeta, Subscription, Upcaster, export_upcaster};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// pub enum Legacy {
///     Added { count: u64 },
/// }
///
/// #[derive(Serialize)]
/// pub enum Current {
///     Incremented { by: u64 },
/// }
///
/// pub struct RenameAdded;
///
/// impl Upcaster for RenameAdded {
///     const NAME: &'static str = "counter-added";
///     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
///     type Old = Legacy;
///     type New = Current;
///
///     fn handles() -> Subscription {
///         Subscription::categories(["counter"]).with_event_types(["Added"])
///     }
///
///     fn upcast(old: Legacy, _meta: &EventMeta<'_>) -> Vec<Current> {
///         match old {
///             Legacy::Added { count } => vec![Current::Incremented { by: count }],
///         }
///     }
/// }
///
/// export_upcaster!(RenameAdded);
/// ```
pub trait Upcaster: 'static {
    /// Plugin name; upcasters run one after the other in the order of their names.
    const NAME: &'static str;
    /// The plugin's own release, e.g. `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;

    /// The old shapes this upcaster reads.
    type Old: DeserializeOwned;
    /// The shapes it writes.
    type New: Serialize;

    /// Which stored events to hand to [`upcast`](Self::upcast), by type and/or category.
    fn handles() -> Subscription;

    /// The events that take the place of `old`, in order: one to rename or reshape it, several
    /// to split it, none to drop it. They keep its stream, version, position and metadata.
    fn upcast(old: Self::Old, meta: &EventMeta<'_>) -> Vec<Self::New>;
}

/// Exports an [`Upcaster`] as the component's `foldhost:plugin/upcaster` interface. Use it
/// once per plugin crate; it expands to nothing unless the target is `wasm32`, so the crate
/// still builds natively.
#[macro_export]
macro_rules! export_upcaster {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct FoldhostUpcaster;

            impl $crate::__private::UpcasterSlot for FoldhostUpcaster {
                type Upcaster = $ty;
            }

            $crate::__private::upcaster::export!(
                FoldhostUpcaster with_types_in $crate::__private::upcaster
            );
        };
    };
}
