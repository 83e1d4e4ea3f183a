//! `serve` flags bounding what clients may make the server hold.

use std::time::Duration;

use clap::Args;

use crate::server::ClientLimits;

#[derive(Debug, Args)]
pub struct ClientLimitArgs {
    /// Most `GET /events/live` feeds open at once; past it a feed is refused with 503 and
    /// Retry-After.
    #[arg(long, env = "FOLDHOST_MAX_LIVE_FEEDS", default_value_t = ClientLimits::default().max_live_feeds)]
    max_live_feeds: usize,
    /// Most bytes of events a live feed reads ahead of its client.
    #[arg(long, env = "FOLDHOST_LIVE_BUFFER_BYTES", value_name = "BYTES", default_value_t = ClientLimits::default().live_buffer_bytes)]
    live_buffer_bytes: usize,
    /// Seconds a connection may go without accepting a byte of its response (a client that
    /// stopped reading) before it is closed.
    #[arg(long, env = "FOLDHOST_WRITE_STALL_TIMEOUT", value_name = "SECONDS", default_value_t = ClientLimits::default().write_stall_timeout.as_secs())]
    write_stall_timeout: u64,
    /// Most writes queued for the journal; past it appends and commands are refused with 503
    /// and Retry-After.
    #[arg(long, env = "FOLDHOST_MAX_QUEUED_WRITES", default_value_t = ClientLimits::default().max_queued_writes)]
    max_queued_writes: usize,
}

impl ClientLimitArgs {
    pub fn limits(&self) -> ClientLimits {
        ClientLimits {
            max_live_feeds: self.max_live_feeds,
            live_buffer_bytes: self.live_buffer_bytes,
            write_stall_timeout: Duration::from_secs(self.write_stall_timeout.max(1)),
            max_queued_writes: self.max_queued_writes,
        }
    }
}
