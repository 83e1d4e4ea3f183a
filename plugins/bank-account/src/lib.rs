//! A bank account aggregate (streams `bank-account-{id}`).
//!
//! Rules: an account is opened once, with a non-empty owner; deposits and
//! withdrawals need a positive amount and an open account; a withdrawal may not
//! overdraw; a deposit may not overflow the balance; an account closes only
//! when its balance is zero, and a closed account accepts nothing more.

use foldhost_guest::{Aggregate, Rejection, export_aggregate, log};
use serde::{Deserialize, Serialize};

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not opened yet.
    #[default]
    New,
    Open,
    Closed,
}

/// The state of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub owner: Option<String>,
    /// In the smallest currency unit.
    pub balance: u64,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
    Close,
}

impl Account {
    /// Refuses unless the account is open.
    fn ensure_open(&self) -> Result<(), Rejection> {
        match self.status {
            Status::New => Err(Rejection::new("account is not open")),
            Status::Open => Ok(()),
            Status::Closed => Err(Rejection::new("account is closed")),
        }
    }
}

fn positive(amount: u64) -> Result<u64, Rejection> {
    if amount == 0 {
        Err(Rejection::new("amount must be positive"))
    } else {
        Ok(amount)
    }
}

impl Aggregate for Account {
    const NAME: &'static str = "bank-account";
    // Feature `v2` changes nothing but the version: a new build to swap in.
    const VERSION: &'static str = if cfg!(feature = "v2") {
        "1.1.0"
    } else {
        "1.0.0"
    };
    type Event = AccountEvent;
    type Command = AccountCommand;

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => {
                self.owner = Some(owner);
                self.status = Status::Open;
            }
            AccountEvent::Deposited { amount } => {
                self.balance = self.balance.saturating_add(amount)
            }
            AccountEvent::Withdrawn { amount } => {
                self.balance = self.balance.saturating_sub(amount)
            }
            AccountEvent::Closed => self.status = Status::Closed,
        }
    }

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, Rejection> {
        let event = match command {
            AccountCommand::Open { owner } => {
                match self.status {
                    Status::New => {}
                    Status::Open => return Err(Rejection::new("account is already open")),
                    Status::Closed => return Err(Rejection::new("account is closed")),
                }
                if owner.trim().is_empty() {
                    return Err(Rejection::new("owner must not be empty"));
                }
                log::info!("opening account for {owner}");
                AccountEvent::Opened { owner }
            }
            AccountCommand::Deposit { amount } => {
                self.ensure_open()?;
                let amount = positive(amount)?;
                if self.balance.checked_add(amount).is_none() {
                    return Err(Rejection::new("deposit would overflow the balance"));
                }
                AccountEvent::Deposited { amount }
            }
            AccountCommand::Withdraw { amount } => {
                self.ensure_open()?;
                let amount = positive(amount)?;
                if amount > self.balance {
                    return Err(Rejection::new(format!(
                        "insufficient funds: balance {}, requested {amount}",
                        self.balance
                    )));
                }
                AccountEvent::Withdrawn { amount }
            }
            AccountCommand::Close => {
                self.ensure_open()?;
                if self.balance != 0 {
                    return Err(Rejection::new(format!(
                        "balance must be zero to close, is {}",
                        self.balance
                    )));
                }
                AccountEvent::Closed
            }
        };
        Ok(vec![event])
    }
}

export_aggregate!(Account);

#[cfg(test)]
mod tests;
