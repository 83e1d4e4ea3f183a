//! How far a plugin may go: time, memory and fuel per call, how much it may
//! hand the host, how fast it may log. One set of defaults, and overrides for
//! named plugins (`hostile:memory=16MiB,timeout=200ms`).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;

use super::engine::EPOCH_TICK;

/// The limits that confine one plugin's calls and instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget for one call into the plugin (one batch, one command).
    pub call_timeout: Duration,
    /// Bytes that all linear memories and tables of one instance may hold together.
    pub memory: usize,
    /// Deterministic budget for one call, in wasmtime fuel (about one unit per
    /// wasm instruction); `None` leaves calls unmetered.
    pub fuel: Option<u64>,
    /// Most bytes one call may hand the host: a state or query answer, a
    /// snapshot, the events of one command, a log line.
    pub answer: usize,
    /// Most events one command may emit.
    pub events_per_command: usize,
    /// Log lines per second, in bursts of up to one second's worth; lines
    /// beyond are dropped and counted.
    pub log_lines_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(1),
            memory: 64 << 20,
            fuel: None,
            answer: 16 << 20,
            events_per_command: 1000,
            log_lines_per_sec: 100,
        }
    }
}

impl Limits {
    /// The call timeout in epoch ticks (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        (self.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    /// Each limit at the more generous of `self` and `other`.
    fn widest(&self, other: &Limits) -> Limits {
        Limits {
            call_timeout: self.call_timeout.max(other.call_timeout),
            memory: self.memory.max(other.memory),
            fuel: self.fuel.zip(other.fuel).map(|(a, b)| a.max(b)),
            answer: self.answer.max(other.answer),
            events_per_command: self.events_per_command.max(other.events_per_command),
            log_lines_per_sec: self.log_lines_per_sec.max(other.log_lines_per_sec),
        }
    }
}

/// The host-wide budget of plugin memory unless configured: 16 instances at the default
/// `memory` limit, twice the default aggregate cache.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;

/// The limits of every plugin: defaults, those of plugins given their own, and the host-wide
/// budget all their instances share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPolicy {
    /// Limits of plugins without their own.
    pub defaults: Limits,
    /// By plugin name.
    pub plugins: BTreeMap<String, Limits>,
    /// Bytes the memories and tables of every plugin instance may hold together (see
    /// [`MemoryBudget`](super::sandbox::MemoryBudget)).
    pub memory_budget: usize,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        Limits::default().into()
    }
}

impl LimitPolicy {
    /// `defaults`, with `overrides` applied in order (a later setting wins), under the
    /// [`DEFAULT_MEMORY_BUDGET`].
    pub fn new(defaults: Limits, overrides: &[PluginLimits]) -> Self {
        let mut plugins = BTreeMap::new();
        for limits in overrides {
            let entry = plugins
                .entry(limits.plugin.clone())
                .or_insert_with(|| defaults.clone());
            limits.apply(entry);
        }
        Self {
            defaults,
            plugins,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }

    /// The same policy under a host-wide budget of `bytes` of plugin memory.
    pub fn with_memory_budget(self, bytes: usize) -> Self {
        Self {
            memory_budget: bytes,
            ..self
        }
    }

    /// The limits of plugin `name`.
    pub fn of(&self, name: &str) -> &Limits {
        self.plugins.get(name).unwrap_or(&self.defaults)
    }

    /// Each limit at its most generous over every plugin: what a component
    /// gets while its name is still unknown (the `describe` call at load).
    pub fn ceiling(&self) -> Limits {
        self.plugins
            .values()
            .fold(self.defaults.clone(), |ceiling, limits| {
                ceiling.widest(limits)
            })
    }

    /// Whether any plugin has a fuel budget: the engine then meters every call.
    pub fn meters_fuel(&self) -> bool {
        self.defaults.fuel.is_some() || self.plugins.values().any(|l| l.fuel.is_some())
    }
}

impl From<Limits> for LimitPolicy {
    /// The same limits for every plugin.
    fn from(defaults: Limits) -> Self {
        Self::new(defaults, &[])
    }
}

/// Limits of one plugin that differ from the defaults, written
/// `NAME:key=value,...` with keys `timeout` (e.g. `2s`, `500ms`), `memory`,
/// `answer` (e.g. `128MiB`), `fuel` (a number, or `off`), `events` (per
/// command) and `logs` (lines per second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// The plugin these limits are for.
    pub plugin: String,
    settings: Vec<Setting>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Timeout(Duration),
    Memory(usize),
    Fuel(Option<u64>),
    Answer(usize),
    Events(usize),
    Logs(u32),
}

impl PluginLimits {
    /// Changes `limits` as these settings say.
    pub fn apply(&self, limits: &mut Limits) {
        for setting in &self.settings {
            match *setting {
                Setting::Timeout(timeout) => limits.call_timeout = timeout,
                Setting::Memory(bytes) => limits.memory = bytes,
                Setting::Fuel(fuel) => limits.fuel = fuel,
                Setting::Answer(bytes) => limits.answer = bytes,
                Setting::Events(count) => limits.events_per_command = count,
                Setting::Logs(rate) => limits.log_lines_per_sec = rate,
            }
        }
    }
}

impl FromStr for PluginLimits {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (plugin, list) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not NAME:key=value,..."))?;
        if plugin.is_empty() {
            return Err(format!("{text:?} names no plugin"));
        }
        let settings = list
            .split(',')
            .map(|pair| {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{pair:?} is not key=value"))?;
                let value = value.trim();
                let setting = match key.trim() {
                    "timeout" => Setting::Timeout(parse_duration(value)?),
                    "memory" => Setting::Memory(parse_size(value)?),
                    "answer" => Setting::Answer(parse_size(value)?),
                    "fuel" if value == "off" => Setting::Fuel(None),
                    "fuel" => Setting::Fuel(Some(parse_number(value)?)),
                    "events" => Setting::Events(parse_number(value)?),
                    "logs" => Setting::Logs(parse_number(value)?),
                    other => {
                        return Err(format!(
                            "unknown limit {other:?} (expected timeout, memory, fuel, answer, \
                             events or logs)"
                        ));
                    }
                };
                Ok(setting)
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            plugin: plugin.to_owned(),
            settings,
        })
    }
}

/// A positive duration such as `1s`, `250ms` or `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("a time limit must be positive".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(format!(
            "{text:?} is not a duration like 2s or 500ms: {error}"
        )),
    }
}

/// A size such as `64MiB`, `1.5GiB` or `4096` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: ByteSize = text
        .parse()
        .map_err(|error| format!("{text:?} is not a size like 64MiB: {error}"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text:?} is too large"))
}

fn parse_number<T: FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a whole number in range"))
}

/// `bytes` for messages: `64.0 MiB`.
pub fn show_size(bytes: usize) -> String {
    ByteSize(bytes as u64).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_what_they_name_and_later_ones_win() {
        let overrides: Vec<PluginLimits> = [
            "hostile:memory=16MiB,timeout=250ms",
            "bank-analytics:fuel=5000000,answer=1GiB,events=10,logs=0",
            "hostile:memory=8MiB",
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        let policy = LimitPolicy::new(Limits::default(), &overrides);
        let hostile = policy.of("hostile");
        assert_eq!(hostile.memory, 8 << 20);
        assert_eq!(hostile.call_timeout, Duration::from_millis(250));
        assert_eq!(hostile.answer, Limits::default().answer);
        let analytics = policy.of("bank-analytics");
        assert_eq!(analytics.fuel, Some(5_000_000));
        assert_eq!(analytics.answer, 1 << 30);
        assert_eq!(
            (analytics.events_per_command, analytics.log_lines_per_sec),
            (10, 0)
        );
        assert_eq!(policy.of("anyone-else"), &Limits::default());
        assert!(policy.meters_fuel());

        let ceiling = policy.ceiling();
        assert_eq!(ceiling.memory, Limits::default().memory);
        assert_eq!(ceiling.answer, 1 << 30);
        assert_eq!(ceiling.call_timeout, Duration::from_secs(1));
        assert_eq!(
            ceiling.fuel, None,
            "unmetered plugins exist, so no fuel cap"
        );
    }

    #[test]
    fn malformed_overrides_say_what_is_wrong() {
        for (text, expect) in [
            ("hostile", "NAME:key=value"),
            (":memory=1MiB", "names no plugin"),
            ("hostile:memory", "not key=value"),
            ("hostile:memory=lots", "not a size"),
            ("hostile:timeout=soon", "not a duration"),
            ("hostile:timeout=0s", "positive"),
            ("hostile:fuel=-1", "whole number"),
            ("hostile:stack=1MiB", "unknown limit \"stack\""),
        ] {
            let error = text.parse::<PluginLimits>().unwrap_err();
            assert!(error.contains(expect), "{text}: {error}");
        }
        let off: PluginLimits = "p:fuel=off".parse().unwrap();
        let mut limits = Limits {
            fuel: Some(1),
            ..Limits::default()
        };
        off.apply(&mut limits);
        assert_eq!(limits.fuel, None);
    }
}
