use foldhost_guest::{Aggregate, codec};

use super::{Account, AccountCommand as C, AccountEvent as E, Status};

/// Runs commands as the host would: decide, store as JSON, decode, apply.
fn run(account: &mut Account, command: C) -> Result<Vec<E>, String> {
    let events = account.handle(command).map_err(|r| r.reason().to_owned())?;
    for event in &events {
        let (ty, data) = codec::encode_json(event).unwrap();
        account.apply(codec::decode_json(&ty, &data).unwrap());
    }
    Ok(events)
}

fn opened(balance: u64) -> Account {
    let mut account = Account::default();
    run(
        &mut account,
        C::Open {
            owner: "ann".into(),
        },
    )
    .unwrap();
    if balance > 0 {
        run(&mut account, C::Deposit { amount: balance }).unwrap();
    }
    account
}

#[test]
fn a_full_life() {
    let mut account = opened(100);
    assert_eq!(
        run(&mut account, C::Withdraw { amount: 30 }),
        Ok(vec![E::Withdrawn { amount: 30 }])
    );
    run(&mut account, C::Withdraw { amount: 70 }).unwrap();
    assert_eq!(run(&mut account, C::Close), Ok(vec![E::Closed]));
    assert_eq!(account.status, Status::Closed);
    assert_eq!(
        account.state_json(),
        r#"{"owner":"ann","balance":0,"status":"closed"}"#
    );
}

#[test]
fn nothing_before_open() {
    let mut account = Account::default();
    for command in [
        C::Deposit { amount: 1 },
        C::Withdraw { amount: 1 },
        C::Close,
    ] {
        assert_eq!(
            run(&mut account, command),
            Err("account is not open".into())
        );
    }
}

#[test]
fn open_once_with_an_owner() {
    let mut account = Account::default();
    assert_eq!(
        run(&mut account, C::Open { owner: "  ".into() }),
        Err("owner must not be empty".into())
    );
    let mut account = opened(0);
    assert_eq!(
        run(
            &mut account,
            C::Open {
                owner: "bob".into()
            }
        ),
        Err("account is already open".into())
    );
}

#[test]
fn amounts_must_be_positive_and_covered() {
    let mut account = opened(10);
    assert_eq!(
        run(&mut account, C::Deposit { amount: 0 }),
        Err("amount must be positive".into())
    );
    assert_eq!(
        run(&mut account, C::Withdraw { amount: 0 }),
        Err("amount must be positive".into())
    );
    assert_eq!(
        run(&mut account, C::Withdraw { amount: 11 }),
        Err("insufficient funds: balance 10, requested 11".into())
    );
    assert_eq!(
        run(&mut account, C::Deposit { amount: u64::MAX }),
        Err("deposit would overflow the balance".into())
    );
    assert_eq!(account.balance, 10);
}

#[test]
fn close_needs_a_zero_balance_and_is_final() {
    let mut account = opened(5);
    assert_eq!(
        run(&mut account, C::Close),
        Err("balance must be zero to close, is 5".into())
    );
    run(&mut account, C::Withdraw { amount: 5 }).unwrap();
    run(&mut account, C::Close).unwrap();
    for command in [
        C::Open {
            owner: "ann".into(),
        },
        C::Deposit { amount: 1 },
        C::Close,
    ] {
        assert_eq!(run(&mut account, command), Err("account is closed".into()));
    }
}

#[test]
fn snapshots_round_trip() {
    let account = opened(42);
    assert_eq!(Account::restore(&account.snapshot()), Ok(account));
    assert!(Account::restore(&[0xff]).is_err());
}

#[test]
fn commands_decode_from_the_wire() {
    assert_eq!(
        codec::decode_json::<C>("Deposit", br#"{"amount":7}"#),
        Ok(C::Deposit { amount: 7 })
    );
    assert_eq!(codec::decode_json::<C>("Close", b""), Ok(C::Close));
}
