//! The live feeds open: the host-wide limit and each client's share of it, so one client
//! cannot hold every feed and leave the others 503 for as long as it likes (a feed waiting at
//! the head sends a few bytes of keep-alive every 15 s and is never cut off as stalled).
//!
//! A feed takes its place in the limit and in its client's share in one step and gives both
//! back when it ends (its client leaves or is cut off, the journal fails, the server stops);
//! see [`shares`](super::shares).

use std::net::IpAddr;
use std::sync::Arc;

use super::shares::{Refused, Shares};

/// The most live feeds open at once, and the most of them one client may hold.
pub struct LiveFeeds {
    shares: Shares,
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
            shares: Shares::new(limit, share),
        }
    }

    /// The feeds one client may hold open (`--live-feeds-per-client`; 0: no share).
    pub fn share(&self) -> usize {
        self.shares.share()
    }

    /// The most feeds one client holds open now (0 without a share).
    pub fn largest_share_held(&self) -> usize {
        self.shares.largest_share_held()
    }

    /// A place for one feed from `client` (see [`clients::of_request`](super::clients::of_request);
    /// none: not known, no share applies), or why there is none.
    pub fn open(self: &Arc<Self>, client: Option<IpAddr>) -> Result<FeedSlot, TooManyFeeds> {
        let client = self.shares.client(client);
        self.shares
            .take(client, 1)
            .map_err(|refused| match refused {
                Refused::Host => TooManyFeeds::Host {
                    limit: self.shares.limit(),
                },
                Refused::Client(client) => TooManyFeeds::Client {
                    client,
                    share: self.shares.share(),
                },
            })?;
        metrics::gauge!("foldhost_live_feeds").increment(1.0);
        Ok(FeedSlot {
            feeds: self.clone(),
            client,
        })
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
        self.feeds.shares.give_back(self.client, 1);
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
        assert_eq!(feeds.shares.held(), 2);
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
        assert_eq!(feeds.shares.held(), 0);
        let off = Arc::new(LiveFeeds::new(3, 3));
        let _all: Vec<_> = (0..3)
            .map(|_| off.open(client("10.0.0.1")).unwrap())
            .collect();
    }
}
