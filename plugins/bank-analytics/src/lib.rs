//! A projection over the `bank-account` category: open accounts, total
//! balance, deposits per UTC day and the largest balances.
//!
//! Queries: `top` (`{"n": k}`, default 10) lists the largest balances of open
//! accounts; `account` (`{"id": stream}`) shows one account. All maps are
//! `BTreeMap`s, so the state and its JSON are deterministic.
//!
//! With feature `v2` (version 2.0.0, state schema 2) it also records the
//! largest single deposit.

mod date;

use std::cmp::Reverse;
use std::collections::BTreeMap;

use foldhost_guest::{EventMeta, Projection, Subscription, export_projection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the projection knows about one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSummary {
    pub owner: String,
    pub balance: u64,
    pub open: bool,
}

/// Deposits made on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayDeposits {
    pub count: u64,
    pub amount: u64,
}

/// The largest single deposit seen (v2).
#[cfg(feature = "v2")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargestDeposit {
    pub account: String,
    pub amount: u64,
    pub position: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analytics {
    pub open_accounts: u64,
    pub total_balance: u64,
    /// Keyed by UTC date, `YYYY-MM-DD`.
    pub deposits_per_day: BTreeMap<String, DayDeposits>,
    /// Keyed by stream name.
    pub accounts: BTreeMap<String, AccountSummary>,
    #[cfg(feature = "v2")]
    pub largest_deposit: Option<LargestDeposit>,
}

/// The `bank-account` events this projection reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum BankEvent {
    Opened {
        owner: String,
    },
    Deposited {
        #[cfg_attr(feature = "lenient", serde(deserialize_with = "lenient_amount"))]
        amount: u64,
    },
    Withdrawn {
        amount: u64,
    },
    Closed,
    /// Event types added to `bank-account` later are skipped.
    #[serde(other)]
    Unknown,
}

/// An amount that is not a number counts as 0 (feature `lenient`).
#[cfg(feature = "lenient")]
fn lenient_amount<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(Value::deserialize(deserializer)?.as_u64().unwrap_or(0))
}

const DEFAULT_TOP: usize = 10;

#[derive(Deserialize)]
struct TopArgs {
    #[serde(default = "default_top")]
    n: usize,
}

fn default_top() -> usize {
    DEFAULT_TOP
}

#[derive(Deserialize)]
struct AccountArgs {
    id: String,
}

/// Runs `f` on the value under `key`, inserting the default value first when
/// there is none: the key is copied into a `String` only then, not on every
/// event.
fn with_entry<V: Default, R>(
    map: &mut BTreeMap<String, V>,
    key: &str,
    f: impl FnOnce(&mut V) -> R,
) -> R {
    match map.get_mut(key) {
        Some(value) => f(value),
        None => f(map.entry(key.to_owned()).or_default()),
    }
}

/// Parses query arguments; no arguments count as `{}`.
fn arguments<T: serde::de::DeserializeOwned>(query: &str, args: Value) -> Result<T, String> {
    let args = if args.is_null() { json!({}) } else { args };
    serde_json::from_value(args).map_err(|e| format!("bad arguments for `{query}`: {e}"))
}

impl Analytics {
    /// The `n` open accounts with the largest balances, ties by stream name.
    pub fn top(&self, n: usize) -> Vec<Value> {
        let mut open: Vec<_> = self.accounts.iter().filter(|(_, a)| a.open).collect();
        open.sort_by_key(|(id, account)| (Reverse(account.balance), *id));
        open.into_iter()
            .take(n)
            .map(|(id, a)| json!({ "id": id, "owner": a.owner, "balance": a.balance }))
            .collect()
    }

    fn deposit(&mut self, amount: u64, meta: &EventMeta<'_>) {
        with_entry(&mut self.accounts, meta.stream, |account| {
            account.balance = account.balance.saturating_add(amount);
        });
        self.total_balance = self.total_balance.saturating_add(amount);
        let date = date::utc_date(meta.recorded_at);
        with_entry(&mut self.deposits_per_day, date.as_str(), |day| {
            day.count += 1;
            day.amount = day.amount.saturating_add(amount);
        });
        #[cfg(feature = "v2")]
        if self
            .largest_deposit
            .as_ref()
            .is_none_or(|l| amount > l.amount)
        {
            self.largest_deposit = Some(LargestDeposit {
                account: meta.stream.to_owned(),
                amount,
                position: meta.position,
            });
        }
    }
}

impl Projection for Analytics {
    const NAME: &'static str = "bank-analytics";
    const VERSION: &'static str = if cfg!(feature = "v2") {
        "2.0.0"
    } else if cfg!(feature = "lenient") {
        "1.0.1"
    } else {
        "1.0.0"
    };
    const STATE_SCHEMA: u32 = if cfg!(feature = "v2") { 2 } else { 1 };
    type Event = BankEvent;

    fn subscription() -> Subscription {
        Subscription::categories(["bank-account"])
    }

    fn apply(&mut self, event: BankEvent, meta: &EventMeta<'_>) {
        match event {
            BankEvent::Opened { owner } => {
                let opened = with_entry(&mut self.accounts, meta.stream, |account| {
                    account.owner = owner;
                    !std::mem::replace(&mut account.open, true)
                });
                if opened {
                    self.open_accounts += 1;
                }
            }
            BankEvent::Deposited { amount } => self.deposit(amount, meta),
            BankEvent::Withdrawn { amount } => {
                let taken = with_entry(&mut self.accounts, meta.stream, |account| {
                    let taken = amount.min(account.balance);
                    account.balance -= taken;
                    taken
                });
                self.total_balance = self.total_balance.saturating_sub(taken);
            }
            BankEvent::Closed => {
                let closed = with_entry(&mut self.accounts, meta.stream, |account| {
                    std::mem::replace(&mut account.open, false)
                });
                if closed {
                    self.open_accounts = self.open_accounts.saturating_sub(1);
                }
            }
            BankEvent::Unknown => {}
        }
    }

    fn query(&self, name: &str, args: Value) -> Result<Value, String> {
        match name {
            "top" => Ok(Value::Array(self.top(arguments::<TopArgs>(name, args)?.n))),
            "account" => {
                let AccountArgs { id } = arguments(name, args)?;
                let account = self
                    .accounts
                    .get(&id)
                    .ok_or_else(|| format!("no account `{id}`"))?;
                Ok(
                    json!({ "id": id, "owner": account.owner, "balance": account.balance, "open": account.open }),
                )
            }
            _ => Err(format!("unknown query `{name}`; try `top` or `account`")),
        }
    }

    /// A summary: the per-account map is reachable through the queries.
    fn state_json(&self) -> String {
        #[cfg_attr(not(feature = "v2"), allow(unused_mut))]
        let mut state = json!({
            "open_accounts": self.open_accounts,
            "total_balance": self.total_balance,
            "accounts": self.accounts.len(),
            "deposits_per_day": self.deposits_per_day,
            "top": self.top(DEFAULT_TOP),
        });
        #[cfg(feature = "v2")]
        {
            state["largest_deposit"] = json!(self.largest_deposit);
        }
        state.to_string()
    }
}

export_projection!(Analytics);

#[cfg(test)]
mod tests;
