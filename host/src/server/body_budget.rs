//! The bytes request bodies hold: the host-wide budget and each client's share of it, so a
//! client with bandwidth cannot hold the whole budget by itself.
//!
//! A body takes its bytes from the budget and from its client's share in one step, and gives
//! both back when it ends (its response is made, its client leaves, it is refused); see
//! [`shares`](super::shares).

use std::net::IpAddr;
use std::sync::Arc;

use super::shares::{Refused, Shares};

/// The host-wide budget of body bytes and the share of it one client may hold.
pub struct BodyBudget {
    shares: Shares,
}

/// Why a body may not take more bytes.
#[derive(Debug)]
pub enum OverBudget {
    /// The bodies held together would pass the budget: retry later (503).
    Host { budget: usize },
    /// The client's own bodies would pass its share: retry once one ends (429).
    Client { client: IpAddr, share: usize },
    /// The body alone is larger than the budget: never (413).
    LargerThanBudget { budget: usize },
    /// The body alone is larger than a client's share: never (413).
    LargerThanShare { share: usize },
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverBudget::Host { budget } => write!(
                f,
                "the server is holding its budget of {budget} bytes of request bodies; retry"
            ),
            OverBudget::Client { client, share } => write!(
                f,
                "the request bodies of client {client} being received or handled hold its \
                 share of {share} bytes of the server's body budget; retry once one of them ends"
            ),
            OverBudget::LargerThanBudget { budget } => write!(
                f,
                "the request body is larger than the server's budget of {budget} bytes for all bodies"
            ),
            OverBudget::LargerThanShare { share } => write!(
                f,
                "the request body is larger than the {share} bytes of request bodies one client \
                 may hold"
            ),
        }
    }
}

impl BodyBudget {
    /// A budget of `budget` bytes of which one client may hold `share` (0: the whole budget).
    pub fn new(budget: usize, share: usize) -> Self {
        Self {
            shares: Shares::new(budget, share),
        }
    }

    /// The bytes all bodies may hold together (`--body-budget`).
    pub fn budget_bytes(&self) -> usize {
        self.shares.limit()
    }

    /// The bytes one client's bodies may hold together (`--body-budget-per-client`; 0: no
    /// share).
    pub fn share_bytes(&self) -> usize {
        self.shares.share()
    }

    /// Bytes of request bodies held now.
    pub fn held_bytes(&self) -> usize {
        self.shares.held()
    }

    /// The most bytes one client's bodies hold now (0 without a share).
    pub fn largest_share_held(&self) -> usize {
        self.shares.largest_share_held()
    }

    /// What one body from `client` (see [`clients::of_request`](super::clients::of_request);
    /// none: not known, no share applies) holds, nothing yet.
    pub fn holding(self: &Arc<Self>, client: Option<IpAddr>) -> Holding {
        Holding {
            budget: self.clone(),
            client: self.shares.client(client),
            bytes: 0,
        }
    }
}

/// The bytes one body holds of the budget and of its client's share; both go back when it is
/// dropped.
pub struct Holding {
    budget: Arc<BodyBudget>,
    client: Option<IpAddr>,
    bytes: usize,
}

impl Holding {
    /// Takes `more` bytes for this body, from the budget and its client's share at once, or
    /// takes nothing and says why not.
    pub fn take(&mut self, more: usize) -> Result<(), OverBudget> {
        let shares = &self.budget.shares;
        let (budget, share) = (shares.limit(), shares.share());
        let bytes = self.bytes.saturating_add(more);
        if bytes > budget {
            return Err(OverBudget::LargerThanBudget { budget });
        }
        if self.client.is_some() && bytes > share {
            return Err(OverBudget::LargerThanShare { share });
        }
        shares
            .take(self.client, more)
            .map_err(|refused| match refused {
                Refused::Host => OverBudget::Host { budget },
                Refused::Client(client) => OverBudget::Client { client, share },
            })?;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.shares.give_back(self.client, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(address: &str) -> Option<IpAddr> {
        Some(super::super::clients::of_peer(address.parse().unwrap()))
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_it_back_with_the_budget() {
        let budget = Arc::new(BodyBudget::new(100, 40));
        let mut first = budget.holding(peer("10.0.0.1"));
        first.take(30).unwrap();
        let mut second = budget.holding(peer("10.0.0.1"));
        assert!(matches!(
            second.take(11),
            Err(OverBudget::Client { share: 40, .. })
        ));
        let mut other = budget.holding(peer("10.0.0.2"));
        other.take(40).unwrap();
        assert_eq!((budget.held_bytes(), budget.largest_share_held()), (70, 40));
        drop(first);
        second.take(40).unwrap();
        drop((second, other));
        assert_eq!((budget.held_bytes(), budget.largest_share_held()), (0, 0));
    }

    #[test]
    fn the_budget_still_bounds_all_clients_together() {
        let budget = Arc::new(BodyBudget::new(100, 40));
        let mut holdings: Vec<_> = (1..=3)
            .map(|n| budget.holding(peer(&format!("10.0.0.{n}"))))
            .collect();
        holdings[0].take(40).unwrap();
        holdings[1].take(40).unwrap();
        assert!(matches!(
            holdings[2].take(21),
            Err(OverBudget::Host { budget: 100 })
        ));
        assert!(matches!(
            holdings[2].take(41),
            Err(OverBudget::LargerThanShare { share: 40 })
        ));
        holdings[2].take(20).unwrap();
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_an_unknown_peer_has_no_share() {
        let budget = Arc::new(BodyBudget::new(100, 40));
        let mut first = budget.holding(peer("2001:db8::1"));
        first.take(40).unwrap();
        let mut neighbour = budget.holding(peer("2001:db8::ffff:2"));
        assert!(matches!(neighbour.take(1), Err(OverBudget::Client { .. })));
        let mut unknown = budget.holding(None);
        unknown.take(60).unwrap();
        assert_eq!(budget.held_bytes(), 100);
    }
}
