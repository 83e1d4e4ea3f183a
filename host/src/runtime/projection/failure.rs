//! What a projection does when folding fails.
//!
//! - A journal that cannot be read (a PostgreSQL restart, a broken connection) is transient:
//!   the same step is retried with exponential backoff (100 ms doubling, capped at
//!   [`MAX_BACKOFF`]) for ever, status `retrying`, and the projection goes on by itself.
//! - A batch the plugin fails on is narrowed down: its events are folded one at a time on
//!   the state rebuilt from before it (a batch may have failed only as a whole).
//! - An event the plugin fails on alone is tried again as its failure deserves. A call that
//!   could not get memory because the host's plugin memory budget was held by other instances
//!   is transient: retried for ever, pausing 1 s doubling (capped), never parked. A call that
//!   ran out of time may have met a busy machine: [`TIMEOUT_TRIES`] tries, pausing 1 s
//!   doubling. Anything else (the plugin returned an error, panicked, ran out of memory, stack
//!   or fuel) is deterministic: the same event on the same state fails the same way, and its
//!   one try was already made on a state rebuilt from a snapshot (after its batch failed), so
//!   it is not tried again: a client appending such events costs the projection a rebuild
//!   each, not seconds of pauses. (A state a reader discarded between two events is rebuilt
//!   and the event folded again, with no try counted.) Then the [`FailurePolicy`] applies:
//!   park the event, or stop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeError;

/// Longest pause between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Tries of an event whose fold fails deterministically, before the policy applies.
pub const TRIES: u32 = 1;
/// Tries of an event whose fold runs out of time, before the policy applies.
pub const TIMEOUT_TRIES: u32 = 5;

/// What a projection does with an event it cannot fold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Record the event as parked, skip it and go on (the default).
    #[default]
    Park,
    /// Stop at the event, `faulted`, until an operator restarts, resets or replaces the
    /// projection (KurrentDB's faulted projection).
    Stop,
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "park" => Ok(Self::Park),
            "stop" => Ok(Self::Stop),
            other => Err(format!(
                "unknown failure policy {other:?}: use park or stop"
            )),
        }
    }
}

impl std::fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Park => "park",
            Self::Stop => "stop",
        })
    }
}

/// What replaying parked events did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ParkReport {
    /// Parked events that folded this time and are parked no more.
    pub replayed: usize,
    /// Parked events that failed again.
    pub still_parked: usize,
}

/// How many tries folding an event gets, given how it failed, and the first pause.
pub(super) fn tries_after(error: &RuntimeError) -> (u32, Duration) {
    if matches!(error, RuntimeError::MemoryBudget { .. }) {
        (u32::MAX, Duration::from_secs(1))
    } else if error.is_timeout() {
        (TIMEOUT_TRIES, Duration::from_secs(1))
    } else {
        (TRIES, Duration::ZERO)
    }
}

/// The pause before try `attempt + 1`: `first` doubling, capped at [`MAX_BACKOFF`].
pub(super) fn backoff(attempt: u32, first: Duration) -> Duration {
    let doubled = first.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let first = Duration::from_millis(100);
        let pauses: Vec<u64> = (1..=11)
            .map(|attempt| backoff(attempt, first).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        assert_eq!(backoff(u32::MAX, first), MAX_BACKOFF);
    }

    #[test]
    fn timeouts_get_more_and_longer_tries() {
        let trap = |message: &str| RuntimeError::Trap {
            plugin: "p".into(),
            context: "applying".into(),
            message: message.into(),
        };
        let timeout = trap("exceeded its time limit of 1s per call");
        assert_eq!(
            tries_after(&timeout),
            (TIMEOUT_TRIES, Duration::from_secs(1))
        );
        let panic = trap("panicked or aborted (unreachable instruction)");
        assert_eq!(tries_after(&panic), (TRIES, Duration::ZERO));
        let starved = RuntimeError::MemoryBudget {
            plugin: "p".into(),
            context: "applying".into(),
            message: "the host's plugin memory budget of 1.0 GiB is exhausted".into(),
        };
        assert_eq!(tries_after(&starved), (u32::MAX, Duration::from_secs(1)));
        assert_eq!("stop".parse(), Ok(FailurePolicy::Stop));
        assert!("skip".parse::<FailurePolicy>().is_err());
    }
}
