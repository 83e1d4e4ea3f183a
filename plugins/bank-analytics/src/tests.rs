use foldhost_guest::{EventMeta, Projection, codec};
use serde_json::json;

use super::Analytics;

const DAY: u64 = 86_400_000;

/// Folds `(stream, type, json, day)` events as the host would deliver them.
fn fold(events: &[(&str, &str, &str, u64)]) -> Analytics {
    let mut state = Analytics::default();
    for (position, (stream, ty, data, day)) in events.iter().enumerate() {
        let meta = EventMeta {
            stream,
            version: 1,
            position: position as u64 + 1,
            recorded_at: day * DAY + 1_000,
        };
        state.apply(codec::decode_json(ty, data.as_bytes()).unwrap(), &meta);
    }
    state
}

fn sample() -> Analytics {
    fold(&[
        ("bank-account-a", "Opened", r#"{"owner":"ann"}"#, 0),
        ("bank-account-b", "Opened", r#"{"owner":"bob"}"#, 0),
        ("bank-account-a", "Deposited", r#"{"amount":100}"#, 0),
        ("bank-account-b", "Deposited", r#"{"amount":300}"#, 1),
        ("bank-account-a", "Frozen", r#"{"reason":"added later"}"#, 1),
        ("bank-account-a", "Withdrawn", r#"{"amount":40}"#, 1),
        ("bank-account-c", "Opened", r#"{"owner":"cy"}"#, 2),
        ("bank-account-c", "Closed", "null", 2),
    ])
}

#[test]
fn counts_accounts_balances_and_daily_deposits() {
    let state = sample();
    assert_eq!(state.open_accounts, 2);
    assert_eq!(state.total_balance, 360);
    let days: Vec<_> = state
        .deposits_per_day
        .iter()
        .map(|(day, d)| (day.as_str(), d.count, d.amount))
        .collect();
    assert_eq!(days, [("1970-01-01", 1, 100), ("1970-01-02", 1, 300)]);
}

#[test]
fn top_lists_open_accounts_by_balance() {
    let state = sample();
    assert_eq!(
        state.query("top", json!({"n": 1})),
        Ok(json!([{"id": "bank-account-b", "owner": "bob", "balance": 300}]))
    );
    let top = state.query("top", serde_json::Value::Null).unwrap();
    assert_eq!(
        top.as_array().map(Vec::len),
        Some(2),
        "closed accounts are left out"
    );
    assert!(state.query("top", json!({"n": "x"})).is_err());
}

#[test]
fn account_query() {
    let state = sample();
    assert_eq!(
        state.query("account", json!({"id": "bank-account-a"})),
        Ok(json!({"id": "bank-account-a", "owner": "ann", "balance": 60, "open": true}))
    );
    assert_eq!(
        state.query("account", json!({"id": "nope"})),
        Err("no account `nope`".to_owned())
    );
    assert!(state.query("account", serde_json::Value::Null).is_err());
    assert!(state.query("bogus", serde_json::Value::Null).is_err());
}

#[test]
fn state_and_snapshot_are_deterministic() {
    let state = sample();
    assert_eq!(state.state_json(), sample().state_json());
    let json: serde_json::Value = serde_json::from_str(&state.state_json()).unwrap();
    assert_eq!(json["accounts"], 3);
    assert_eq!(json["top"][0]["id"], "bank-account-b");
    assert_eq!(Analytics::restore(&state.snapshot()), Ok(state));
}

#[test]
fn subscribes_to_bank_accounts() {
    let subscription = Analytics::subscription();
    assert!(subscription.matches("bank-account-1", "Opened"));
    assert!(!subscription.matches("shopping-cart-1", "ItemAdded"));
}

#[cfg(feature = "v2")]
#[test]
fn v2_tracks_the_largest_deposit() {
    let state = sample();
    let largest = state.largest_deposit.as_ref().unwrap();
    assert_eq!(
        (largest.account.as_str(), largest.amount, largest.position),
        ("bank-account-b", 300, 4)
    );
    assert_eq!((Analytics::VERSION, Analytics::STATE_SCHEMA), ("2.0.0", 2));
}
