//! A test upcaster that misbehaves on purpose: on an event of type `Poison` it
//! panics, on `Spin` it loops for ever (the host's time limit stops it). Every
//! other event of category `bank-account` passes unchanged. Hosts must contain
//! it like any other plugin.

use foldhost_guest::{EventMeta, Subscription, Upcaster, export_upcaster};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub enum Hostile {
    Poison,
    Spin,
}

#[derive(Serialize)]
pub enum Never {}

pub struct HostileUpcaster;

impl Upcaster for HostileUpcaster {
    const NAME: &'static str = "hostile-upcaster";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Old = Hostile;
    type New = Never;

    fn handles() -> Subscription {
        Subscription::categories(["bank-account"]).with_event_types(["Poison", "Spin"])
    }

    fn upcast(old: Hostile, meta: &EventMeta<'_>) -> Vec<Never> {
        match old {
            Hostile::Poison => panic!("poisoned event at position {}", meta.position),
            Hostile::Spin => {
                let mut n: u64 = meta.position;
                loop {
                    n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        }
    }
}

export_upcaster!(HostileUpcaster);
