//! `serve` flags bounding what clients may make the server hold, and what confines each
//! plugin.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::runtime::{
    DEFAULT_MEMORY_BUDGET, LimitPolicy, Limits, PluginLimits, parse_duration, parse_size, show_size,
};
use crate::server::ClientLimits;

#[derive(Debug, Args)]
pub struct ClientLimitArgs {
    /// Most `GET /events/live` feeds open at once; past it a feed is refused with 503 and
    /// Retry-After.
    #[arg(long, env = "FOLDHOST_MAX_LIVE_FEEDS", default_value_t = ClientLimits::default().max_live_feeds)]
    max_live_feeds: usize,
    /// Most of --max-live-feeds one client (an IP address; an IPv6 /64) may hold open at once;
    /// past it its feed is refused with 429 and Retry-After. 0 turns it off. Behind a reverse
    /// proxy every client has the proxy's address (X-Forwarded-For is not trusted): there,
    /// turn it off and bound each client at the proxy [default: a quarter of
    /// --max-live-feeds].
    #[arg(long, env = "FOLDHOST_LIVE_FEEDS_PER_CLIENT")]
    live_feeds_per_client: Option<usize>,
    /// Most bytes of events a live feed reads ahead of its client.
    #[arg(long, env = "FOLDHOST_LIVE_BUFFER_BYTES", value_name = "BYTES", default_value_t = ClientLimits::default().live_buffer_bytes)]
    live_buffer_bytes: usize,
    /// Seconds a connection may go without accepting a byte of its response (a client that
    /// stopped reading) before it is closed.
    #[arg(long, env = "FOLDHOST_WRITE_STALL_TIMEOUT", value_name = "SECONDS", default_value_t = ClientLimits::default().write_stall_timeout.as_secs())]
    write_stall_timeout: u64,
    /// Seconds a connection may take to send a request's headers, counted from when it opens
    /// or its previous response ends (an idle or trickling connection is closed after it); a
    /// request body of which nothing arrives for as long is refused with 408.
    #[arg(long, env = "FOLDHOST_READ_TIMEOUT", value_name = "SECONDS", default_value_t = ClientLimits::default().read_timeout.as_secs())]
    read_timeout: u64,
    /// Bytes per second a request body must average, from when the server began reading it,
    /// once --read-timeout has passed since then, e.g. 8KiB (an 8 MiB body then has 1,024 s, a
    /// 64 MiB upload 8,192 s); a slower one is refused with 408. 0 turns it off.
    #[arg(long, env = "FOLDHOST_BODY_MIN_RATE", value_name = "BYTES", default_value_t = Size(ClientLimits::default().body_min_rate))]
    body_min_rate: Size,
    /// Most bytes of request bodies held at once, being received or handled, e.g. 256MiB;
    /// a body that would go past it is refused with 503 and Retry-After, one larger than it
    /// with 413 (keep it above 64 MiB to take any plugin upload).
    #[arg(long, env = "FOLDHOST_BODY_BUDGET", value_name = "SIZE", default_value_t = Size(ClientLimits::default().body_budget))]
    body_budget: Size,
    /// Most bytes of --body-budget the request bodies of one client (an IP address; an IPv6
    /// /64) may hold at once, e.g. 64MiB; a body that would go past it is refused with 429 and
    /// Retry-After, one larger than it with 413. 0 turns it off. Behind a reverse proxy every
    /// client has the proxy's address (X-Forwarded-For is not trusted): there, turn it off and
    /// bound each client at the proxy [default: a quarter of --body-budget].
    #[arg(long, env = "FOLDHOST_BODY_BUDGET_PER_CLIENT", value_name = "SIZE", value_parser = parse_size)]
    body_budget_per_client: Option<usize>,
    /// Most writes queued for the journal; past it appends and commands are refused with 503
    /// and Retry-After.
    #[arg(long, env = "FOLDHOST_MAX_QUEUED_WRITES", default_value_t = ClientLimits::default().max_queued_writes)]
    max_queued_writes: usize,
    /// A host name requests may be addressed to and browser pages may come from, besides the
    /// server's own address: a reverse proxy's public name (repeat it or separate names with
    /// commas). Requests from pages of other origins are refused with 403, and a server
    /// listening on a loopback address answers only requests for localhost and these names
    /// (against DNS rebinding).
    #[arg(
        long = "allowed-host",
        env = "FOLDHOST_ALLOWED_HOSTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
}

impl ClientLimitArgs {
    pub fn limits(&self) -> ClientLimits {
        ClientLimits {
            max_live_feeds: self.max_live_feeds,
            live_feeds_per_client: self.live_feeds_per_client,
            live_buffer_bytes: self.live_buffer_bytes,
            write_stall_timeout: Duration::from_secs(self.write_stall_timeout.max(1)),
            read_timeout: Duration::from_secs(self.read_timeout.max(1)),
            body_min_rate: self.body_min_rate.0,
            body_budget: self.body_budget.0,
            body_budget_per_client: self.body_budget_per_client,
            max_queued_writes: self.max_queued_writes,
            allowed_hosts: self.allowed_hosts.clone(),
        }
    }
}

/// A size flag's value: parsed as [`parse_size`] does, shown in its largest whole binary unit,
/// so that a default written once (in [`ClientLimits::default`], say) reads `256MiB` in
/// `--help`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Size(usize);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_size(text).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Size(bytes) = *self;
        let unit = [(30, "GiB"), (20, "MiB"), (10, "KiB")]
            .into_iter()
            .find(|(shift, _)| bytes != 0 && bytes.trailing_zeros() >= *shift);
        match unit {
            Some((shift, unit)) => write!(f, "{}{unit}", bytes >> shift),
            None => write!(f, "{bytes}"),
        }
    }
}

/// What confines every plugin, and the plugins given other limits.
#[derive(Debug, Args)]
pub struct PluginLimitArgs {
    /// Wall-clock limit for one call into a plugin, e.g. 1s or 250ms [default: 1s].
    #[arg(long, env = "FOLDHOST_CALL_TIMEOUT", value_parser = parse_duration)]
    call_timeout: Option<Duration>,
    /// Memory of one plugin instance, all its linear memories and tables together, e.g.
    /// 128MiB [default: 64MiB].
    #[arg(long, env = "FOLDHOST_PLUGIN_MEMORY", value_parser = parse_size)]
    plugin_memory: Option<usize>,
    /// Deterministic budget for one call in wasmtime fuel (about one unit per wasm
    /// instruction). Off by default: metering slows every plugin call by 15-50 %.
    #[arg(long, env = "FOLDHOST_PLUGIN_FUEL")]
    plugin_fuel: Option<u64>,
    /// Other limits for one plugin, NAME:key=value,... with keys timeout, memory, fuel (a
    /// number or off), answer (most bytes one call may hand the host), events (per command)
    /// and logs (lines per second); e.g. `bank-analytics:timeout=5s,memory=256MiB`.
    /// Repeatable; separated by ';' in the environment variable.
    #[arg(
        long = "plugin-limit",
        value_name = "NAME:LIMITS",
        env = "FOLDHOST_PLUGIN_LIMITS",
        value_delimiter = ';'
    )]
    plugin_limits: Vec<PluginLimits>,
    /// Memory of every plugin instance together (all their linear memories and tables: those
    /// running a call, cached aggregate states, projections), e.g. 2GiB. A growth past it fails
    /// that call with 503 and Retry-After, whatever the instance's own limit; it must exceed
    /// --aggregate-cache and every plugin's memory limit.
    #[arg(long, env = "FOLDHOST_PLUGINS_MEMORY_BUDGET", value_name = "SIZE", default_value_t = Size(DEFAULT_MEMORY_BUDGET))]
    plugins_memory_budget: Size,
}

impl PluginLimitArgs {
    pub fn policy(&self) -> LimitPolicy {
        let defaults = Limits::default();
        let defaults = Limits {
            call_timeout: self.call_timeout.unwrap_or(defaults.call_timeout),
            memory: self.plugin_memory.unwrap_or(defaults.memory),
            fuel: self.plugin_fuel.or(defaults.fuel),
            ..defaults
        };
        LimitPolicy::new(defaults, &self.plugin_limits)
            .with_memory_budget(self.plugins_memory_budget.0)
    }
}

/// Refuses a host-wide plugin memory budget that one instance at its own limit, or the cached
/// aggregate states (`aggregate_cache` bytes of idle instances), could fill alone: the cache
/// would then hold the budget and refuse new work for as long as its states stay cached.
pub fn check_memory_budget(policy: &LimitPolicy, aggregate_cache: usize) -> anyhow::Result<()> {
    let budget = policy.memory_budget;
    let limits = std::iter::once(("--plugin-memory ".to_owned(), &policy.defaults)).chain(
        (policy.plugins.iter())
            .map(|(name, limits)| (format!("--plugin-limit {name}:memory="), limits)),
    );
    for (flag, limits) in limits {
        if limits.memory > budget {
            anyhow::bail!(
                "{flag}{} is more than --plugins-memory-budget ({}): no instance could grow to it",
                show_size(limits.memory),
                show_size(budget)
            );
        }
    }
    if aggregate_cache >= budget {
        anyhow::bail!(
            "--aggregate-cache ({}) must be smaller than --plugins-memory-budget ({}): the cached \
             states' instances draw on it too",
            show_size(aggregate_cache),
            show_size(budget)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_shows_in_its_largest_whole_unit_and_reads_back_the_same() {
        for (bytes, shown) in [(256 << 20, "256MiB"), (8 << 10, "8KiB"), (1 << 30, "1GiB")] {
            assert_eq!(Size(bytes).to_string(), shown);
            assert_eq!(shown.parse::<Size>(), Ok(Size(bytes)));
        }
        for bytes in [0, 1000, (3 << 20) + 1] {
            assert_eq!(Size(bytes).to_string().parse::<Size>(), Ok(Size(bytes)));
        }
    }
}
