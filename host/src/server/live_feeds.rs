//! The live feeds open: one ledger for the host-wide limit and each client's share of it, so
//! one client cannot hold every feed and leave the others 503 for as long as it likes (a feed
//! waiting at the head sends a few bytes of keep-alive every 15 s and is never cut off as
//! stalled).
//!
//! A feed takes its place in the limit and in its client's share in one step, under one lock,
//! and gives both back in one step when it ends (its client leaves or is cut off, the journal
//! fails, the server stops). A client is its peer's IP address, an IPv6 address by its /64
//! (see [`clients`](super::clients)); a client with no feed open has no entry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The most live feeds open at once, and the most of them one client may hold.
pub struct LiveFeeds {
    limit: usize,
    /// 0: no share, a client may hold every feed.
    share: usize,
    ledger: Mutex<Ledger>,
}

/// The feeds open in all, and by each client with one open.
#[derive(Default)]
struct Ledger {
    open: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a feed may not open.
#[derive(Debug)]
pub enum TooManyFeeds {
    /// The server has its limit of feeds open: retry later (503).
    Host { limit: usize },
    /// The client has its share of feeds open: retry once one of them ends (429).
    Client { client: IpAddr, share: usize },
}

impl std::fmt::Display for TooManyFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TooManyFeeds::Host { limit } => write!(
                f,
                "too many live feeds: {limit} are open, the most this server allows"
            ),
            TooManyFeeds::Client { client, share } => write!(
                f,
                "client {client} has {share} live feeds open, the most one client may hold; \
                 retry once one of them ends"
            ),
        }
    }
}

impl LiveFeeds {
    /// At most `limit` feeds, of which one client may hold `share` (0, or `limit` or more: no
    /// share).
    pub fn new(limit: usize, share: usize) -> Self {
        Self {
            limit,
            share: if share >= limit { 0 } else { share },
            ledger: Mutex::default(),
        }
    }

    /// The feeds one client may hold open (`--live-feeds-per-client`; 0: no share).
    pub fn share(&self) -> usize {
        self.share
    }

    /// The most feeds one client holds open now (0 without a share).
    pub fn largest_share_held(&self) -> usize {
        self.ledger().by_client.values().copied().max().unwrap_or(0)
    }

    /// A place for one feed from `client` (see [`clients::of_request`](super::clients::of_request);
    /// none: not known, no share applies), or why there is none.
    pub fn open(self: &Arc<Self>, client: Option<IpAddr>) -> Result<FeedSlot, TooManyFeeds> {
        let client = client.filter(|_| self.share > 0);
        let mut ledger = self.ledger();
        if let Some(client) = client
            && ledger.by_client.get(&client).copied().unwrap_or(0) >= self.share
        {
            return Err(TooManyFeeds::Client {
                client,
                share: self.share,
            });
        }
        if ledger.open >= self.limit {
            return Err(TooManyFeeds::Host { limit: self.limit });
        }
        ledger.open += 1;
        if let Some(client) = client {
            *ledger.by_client.entry(client).or_default() += 1;
        }
        metrics::gauge!("foldhost_live_feeds").increment(1.0);
        Ok(FeedSlot {
            feeds: self.clone(),
            client,
        })
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A feed's place among the open feeds and in its client's share, given back when the feed
/// ends (its client left, was cut off, or the server stops).
pub struct FeedSlot {
    feeds: Arc<LiveFeeds>,
    client: Option<IpAddr>,
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut ledger = self.feeds.ledger();
        ledger.open -= 1;
        if let Some(client) = self.client {
            let std::collections::hash_map::Entry::Occupied(mut held) =
                ledger.by_client.entry(client)
            else {
                unreachable!("a client with a feed open has an entry");
            };
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
        metrics::gauge!("foldhost_live_feeds").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str) -> Option<IpAddr> {
        Some(address.parse().unwrap())
    }

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_it_back_when_a_feed_ends() {
        let feeds = Arc::new(LiveFeeds::new(8, 2));
        let first = feeds.open(client("10.0.0.1")).unwrap();
        let _second = feeds.open(client("10.0.0.1")).unwrap();
        assert!(matches!(
            feeds.open(client("10.0.0.1")),
            Err(TooManyFeeds::Client { share: 2, .. })
        ));
        let other = feeds.open(client("10.0.0.2")).unwrap();
        assert_eq!(feeds.largest_share_held(), 2);
        drop(first);
        let _third = feeds.open(client("10.0.0.1")).unwrap();
        drop(other);
        assert_eq!(feeds.ledger().by_client.len(), 1, "no entry left behind");
    }

    #[test]
    fn the_limit_still_bounds_all_clients_together_and_an_unknown_peer_has_no_share() {
        let feeds = Arc::new(LiveFeeds::new(3, 2));
        let held: Vec<_> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .into_iter()
            .map(|address| feeds.open(client(address)).unwrap())
            .collect();
        assert!(matches!(
            feeds.open(client("10.0.0.4")),
            Err(TooManyFeeds::Host { limit: 3 })
        ));
        drop(held);
        let unknown: Vec<_> = (0..3).map(|_| feeds.open(None).unwrap()).collect();
        assert!(matches!(feeds.open(None), Err(TooManyFeeds::Host { .. })));
        drop(unknown);
        assert_eq!(feeds.ledger().open, 0);
        let off = Arc::new(LiveFeeds::new(3, 3));
        let _all: Vec<_> = (0..3)
            .map(|_| off.open(client("10.0.0.1")).unwrap())
            .collect();
    }
}
