//! A shopping cart aggregate (streams `shopping-cart-{id}`).
//!
//! Rules: items need a SKU and a positive quantity; adding a SKU again adds to
//! its quantity and must use the same price; only SKUs in the cart can be
//! removed; an empty cart cannot be checked out; a checked-out cart accepts
//! nothing more.

use std::collections::BTreeMap;

use foldhost_guest::{Aggregate, Rejection, export_aggregate};
use serde::{Deserialize, Serialize};

/// One SKU in the cart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub qty: u32,
    pub price_cents: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Keyed by SKU.
    pub items: BTreeMap<String, Line>,
    pub checked_out: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartEvent {
    ItemAdded {
        sku: String,
        qty: u32,
        price_cents: u64,
    },
    ItemRemoved {
        sku: String,
    },
    CheckedOut {
        total_cents: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CartCommand {
    AddItem {
        sku: String,
        qty: u32,
        price_cents: u64,
    },
    RemoveItem {
        sku: String,
    },
    Checkout,
}

impl Cart {
    /// The cart's value, `None` on overflow.
    pub fn total_cents(&self) -> Option<u64> {
        self.items.values().try_fold(0u64, |total, line| {
            total.checked_add(u64::from(line.qty).checked_mul(line.price_cents)?)
        })
    }

    fn add(&self, sku: String, qty: u32, price_cents: u64) -> Result<CartEvent, Rejection> {
        if sku.trim().is_empty() {
            return Err(Rejection::new("sku must not be empty"));
        }
        if qty == 0 {
            return Err(Rejection::new("quantity must be positive"));
        }
        let line = self.items.get(&sku).copied().unwrap_or(Line {
            qty: 0,
            price_cents,
        });
        if line.price_cents != price_cents {
            return Err(Rejection::new(format!(
                "{sku} is already in the cart at {} cents",
                line.price_cents
            )));
        }
        if line.qty.checked_add(qty).is_none() {
            return Err(Rejection::new("quantity is too large"));
        }
        let added = u64::from(qty).checked_mul(price_cents);
        if added
            .zip(self.total_cents())
            .and_then(|(a, t)| a.checked_add(t))
            .is_none()
        {
            return Err(Rejection::new("cart total would overflow"));
        }
        Ok(CartEvent::ItemAdded {
            sku,
            qty,
            price_cents,
        })
    }
}

impl Aggregate for Cart {
    const NAME: &'static str = "shopping-cart";
    const VERSION: &'static str = "1.0.0";
    type Event = CartEvent;
    type Command = CartCommand;

    fn apply(&mut self, event: CartEvent) {
        match event {
            CartEvent::ItemAdded {
                sku,
                qty,
                price_cents,
            } => {
                let line = self.items.entry(sku).or_default();
                line.qty = line.qty.saturating_add(qty);
                line.price_cents = price_cents;
            }
            CartEvent::ItemRemoved { sku } => {
                self.items.remove(&sku);
            }
            CartEvent::CheckedOut { .. } => self.checked_out = true,
        }
    }

    fn handle(&self, command: CartCommand) -> Result<Vec<CartEvent>, Rejection> {
        if self.checked_out {
            return Err(Rejection::new("cart is checked out"));
        }
        let event = match command {
            CartCommand::AddItem {
                sku,
                qty,
                price_cents,
            } => self.add(sku, qty, price_cents)?,
            CartCommand::RemoveItem { sku } => {
                if !self.items.contains_key(&sku) {
                    return Err(Rejection::new(format!("{sku} is not in the cart")));
                }
                CartEvent::ItemRemoved { sku }
            }
            CartCommand::Checkout => {
                if self.items.is_empty() {
                    return Err(Rejection::new("cannot check out an empty cart"));
                }
                let total_cents = self
                    .total_cents()
                    .ok_or_else(|| Rejection::new("cart total overflows"))?;
                CartEvent::CheckedOut { total_cents }
            }
        };
        Ok(vec![event])
    }

    /// The serde form plus the current total.
    fn state_json(&self) -> String {
        serde_json::json!({
            "items": self.items,
            "checked_out": self.checked_out,
            "total_cents": self.total_cents(),
        })
        .to_string()
    }
}

export_aggregate!(Cart);

#[cfg(test)]
mod tests;
