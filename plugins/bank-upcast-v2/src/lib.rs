//! Upcaster from the second shape of `bank-account` events to the current one:
//! `AccountOpened { holder }` becomes `Opened { owner }` and
//! `Credited { amount }` becomes `Deposited { amount }`. With `bank-upcast-v1`
//! before it, the first shape reaches the current one too.

use foldhost_guest::{EventMeta, Subscription, Upcaster, export_upcaster};
use serde::{Deserialize, Serialize};

/// The second shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum SecondShape {
    AccountOpened { holder: String },
    Credited { amount: u64 },
}

/// The current shape (as `bank-account` folds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Current {
    Opened { owner: String },
    Deposited { amount: u64 },
}

pub struct CurrentNames;

impl Upcaster for CurrentNames {
    const NAME: &'static str = "bank-upcast-v2";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Old = SecondShape;
    type New = Current;

    fn handles() -> Subscription {
        Subscription::categories(["bank-account"]).with_event_types(["AccountOpened", "Credited"])
    }

    fn upcast(old: SecondShape, _meta: &EventMeta<'_>) -> Vec<Current> {
        vec![match old {
            SecondShape::AccountOpened { holder } => Current::Opened { owner: holder },
            SecondShape::Credited { amount } => Current::Deposited { amount },
        }]
    }
}

export_upcaster!(CurrentNames);
