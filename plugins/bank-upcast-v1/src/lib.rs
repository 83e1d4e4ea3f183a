//! Upcaster from the first shape of `bank-account` events to the second.
//!
//! In the first shape an account was opened together with its first deposit,
//! `OpenedWithDeposit { holder, initial }`. The second shape made those two
//! events: `AccountOpened { holder }` and `Credited { amount }`. This upcaster
//! splits the first into the second; `bank-upcast-v2` (which runs after it:
//! upcasters run in name order) turns the second shape into the current one.

use foldhost_guest::{EventMeta, Subscription, Upcaster, export_upcaster};
use serde::{Deserialize, Serialize};

/// The first shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum FirstShape {
    OpenedWithDeposit { holder: String, initial: u64 },
}

/// The second shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SecondShape {
    AccountOpened { holder: String },
    Credited { amount: u64 },
}

pub struct SplitOpenings;

impl Upcaster for SplitOpenings {
    const NAME: &'static str = "bank-upcast-v1";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Old = FirstShape;
    type New = SecondShape;

    fn handles() -> Subscription {
        Subscription::categories(["bank-account"]).with_event_types(["OpenedWithDeposit"])
    }

    fn upcast(old: FirstShape, _meta: &EventMeta<'_>) -> Vec<SecondShape> {
        match old {
            FirstShape::OpenedWithDeposit { holder, initial } => {
                let opened = SecondShape::AccountOpened { holder };
                match initial {
                    0 => vec![opened],
                    amount => vec![opened, SecondShape::Credited { amount }],
                }
            }
        }
    }
}

export_upcaster!(SplitOpenings);

#[cfg(test)]
mod tests {
    use super::*;

    const META: EventMeta<'static> = EventMeta {
        stream: "bank-account-1",
        version: 1,
        position: 1,
        recorded_at: 0,
    };

    #[test]
    fn an_opening_with_a_deposit_becomes_two_events() {
        let old = FirstShape::OpenedWithDeposit {
            holder: "Ada".into(),
            initial: 5,
        };
        assert_eq!(
            SplitOpenings::upcast(old, &META),
            [
                SecondShape::AccountOpened {
                    holder: "Ada".into()
                },
                SecondShape::Credited { amount: 5 }
            ]
        );
        let empty = FirstShape::OpenedWithDeposit {
            holder: "Bo".into(),
            initial: 0,
        };
        assert_eq!(SplitOpenings::upcast(empty, &META).len(), 1);
    }
}
