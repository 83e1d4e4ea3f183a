//! A host-wide limit on something clients hold (request-body bytes, live feeds) and each
//! client's share of it, in one ledger, so one client cannot hold all of it by itself.
//!
//! A holder takes from the limit and from its client's share in one step, under one lock, and
//! gives both back in one step: the two counts cannot drift apart. A client is its peer's IP
//! address, an IPv6 address by its /64 (see [`clients`](super::clients)); a client holding
//! nothing has no entry.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

/// A limit on what all clients hold together, and the part of it one client may hold.
pub struct Shares {
    limit: usize,
    /// 0: no share, a client may hold up to the whole limit.
    share: usize,
    ledger: Mutex<Ledger>,
}

/// What is held in all, and by each client holding some.
#[derive(Default)]
struct Ledger {
    held: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why an amount may not be taken.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// All clients together would hold more than the limit.
    Host,
    /// This client would hold more than its share.
    Client(IpAddr),
}

impl Shares {
    /// A limit of `limit` of which one client may hold `share` (0, or `limit` or more: no
    /// share).
    pub fn new(limit: usize, share: usize) -> Self {
        Self {
            limit,
            share: if share >= limit { 0 } else { share },
            ledger: Mutex::default(),
        }
    }

    /// What all clients may hold together.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What one client may hold (0: no share).
    pub fn share(&self) -> usize {
        self.share
    }

    /// What is held now, by all clients.
    pub fn held(&self) -> usize {
        self.ledger().held
    }

    /// The most one client holds now (0 without a share).
    pub fn largest_share_held(&self) -> usize {
        self.ledger().by_client.values().copied().max().unwrap_or(0)
    }

    /// The client whose share a holder from `client` counts against: none when there is no
    /// share or the client is not known (see [`clients::of_request`](super::clients::of_request)).
    pub fn client(&self, client: Option<IpAddr>) -> Option<IpAddr> {
        client.filter(|_| self.share > 0)
    }

    /// Takes `amount` for `client` (from [`client`](Self::client)), from the limit and its share
    /// at once, or takes nothing and says why not (the client's share is checked first).
    pub fn take(&self, client: Option<IpAddr>, amount: usize) -> Result<(), Refused> {
        let mut ledger = self.ledger();
        if let Some(client) = client {
            let held = ledger.by_client.get(&client).copied().unwrap_or(0);
            if held.saturating_add(amount) > self.share {
                return Err(Refused::Client(client));
            }
        }
        if ledger.held.saturating_add(amount) > self.limit {
            return Err(Refused::Host);
        }
        ledger.held += amount;
        if let Some(client) = client {
            *ledger.by_client.entry(client).or_default() += amount;
        }
        Ok(())
    }

    /// Gives back `amount` that `client` took.
    pub fn give_back(&self, client: Option<IpAddr>, amount: usize) {
        let mut ledger = self.ledger();
        ledger.held -= amount;
        if let Some(client) = client {
            let Entry::Occupied(mut held) = ledger.by_client.entry(client) else {
                unreachable!("a client giving back what it took has an entry");
            };
            *held.get_mut() -= amount;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str) -> Option<IpAddr> {
        Some(address.parse().unwrap())
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_it_back() {
        let shares = Shares::new(100, 40);
        let (one, two) = (client("10.0.0.1"), client("10.0.0.2"));
        shares.take(one, 30).unwrap();
        assert_eq!(shares.take(one, 11), Err(Refused::Client(one.unwrap())));
        shares.take(two, 40).unwrap();
        assert_eq!((shares.held(), shares.largest_share_held()), (70, 40));
        shares.give_back(one, 30);
        shares.take(one, 40).unwrap();
        shares.give_back(one, 40);
        shares.give_back(two, 40);
        assert_eq!(shares.held(), 0);
        assert!(shares.ledger().by_client.is_empty(), "no entry left behind");
    }

    #[test]
    fn the_limit_bounds_all_clients_together_and_an_unknown_client_has_no_share() {
        let shares = Shares::new(100, 40);
        shares.take(client("10.0.0.1"), 40).unwrap();
        shares.take(client("10.0.0.2"), 40).unwrap();
        assert_eq!(shares.take(client("10.0.0.3"), 21), Err(Refused::Host));
        shares.take(None, 20).unwrap();
        assert_eq!(shares.take(None, 1), Err(Refused::Host));
        assert_eq!(shares.client(client("10.0.0.4")), client("10.0.0.4"));
        let unshared = Shares::new(3, 3);
        assert_eq!(
            (unshared.share(), unshared.client(client("10.0.0.1"))),
            (0, None)
        );
    }
}
