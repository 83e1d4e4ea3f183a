//! What the benchmarks share.

/// `n` scaled by `FOLDHOST_BENCH_SCALE` (e.g. 0.1 for a quick pass), and at least `floor`.
pub fn scale(n: usize, floor: usize) -> usize {
    let factor: f64 = std::env::var("FOLDHOST_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(floor)
}

/// How long a bench waits for a projection before it gives up (a failure guard, not a bound
/// on what is measured).
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1800);

/// Appends `accounts` bank-account histories of `per_account` events to `journal`, one append
/// each: `Opened`, then deposits whose data `deposit(account, i)` gives for i = 1, 2, ….
/// Returns the head position.
pub fn fill_accounts(
    journal: &foldhost::journal::Journal,
    accounts: usize,
    per_account: usize,
    mut deposit: impl FnMut(usize, usize) -> serde_json::Value,
) -> u64 {
    use foldhost::journal::{ExpectedVersion, NewEvent};
    for account in 0..accounts {
        let owner = serde_json::json!({"owner": format!("owner {account}")});
        let mut batch = vec![NewEvent::json("Opened", &owner)];
        batch.extend((1..per_account).map(|i| NewEvent::json("Deposited", &deposit(account, i))));
        let stream = format!("bank-account-{account}");
        journal
            .append_blocking(&stream, ExpectedVersion::NoStream, batch)
            .unwrap();
    }
    journal.head_position()
}

/// The deposits most benches make: `i % 50 + 1`.
pub fn deposit(_account: usize, i: usize) -> serde_json::Value {
    serde_json::json!({"amount": i % 50 + 1})
}

/// Waits until `runner` is live at `head` or past it; panics if it faults.
pub async fn wait_live(runner: &foldhost::runtime::ProjectionRunner, head: u64) {
    use foldhost::runtime::ProjectionStatus;
    let mut status = runner.watch_status();
    tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| match s {
            ProjectionStatus::Live { position } => *position >= head,
            ProjectionStatus::Faulted { reason, .. } => panic!("projection faulted: {reason}"),
            _ => false,
        }),
    )
    .await
    .expect("the projection caught up in time")
    .unwrap();
}
