use foldhost_guest::{Aggregate, codec};

use super::{Cart, CartCommand as C, CartEvent as E};

fn run(cart: &mut Cart, command: C) -> Result<Vec<E>, String> {
    let events = cart.handle(command).map_err(|r| r.reason().to_owned())?;
    for event in &events {
        let (ty, data) = codec::encode_json(event).unwrap();
        cart.apply(codec::decode_json(&ty, &data).unwrap());
    }
    Ok(events)
}

fn add(sku: &str, qty: u32, price_cents: u64) -> C {
    C::AddItem {
        sku: sku.into(),
        qty,
        price_cents,
    }
}

#[test]
fn fill_and_check_out() {
    let mut cart = Cart::default();
    run(&mut cart, add("apple", 2, 50)).unwrap();
    run(&mut cart, add("apple", 1, 50)).unwrap();
    run(&mut cart, add("pear", 1, 80)).unwrap();
    run(&mut cart, C::RemoveItem { sku: "pear".into() }).unwrap();
    assert_eq!(
        run(&mut cart, C::Checkout),
        Ok(vec![E::CheckedOut { total_cents: 150 }])
    );
    assert_eq!(
        cart.state_json(),
        r#"{"checked_out":true,"items":{"apple":{"price_cents":50,"qty":3}},"total_cents":150}"#
    );
}

#[test]
fn rejections() {
    let mut cart = Cart::default();
    assert_eq!(
        run(&mut cart, C::Checkout),
        Err("cannot check out an empty cart".into())
    );
    assert_eq!(
        run(&mut cart, add("", 1, 1)),
        Err("sku must not be empty".into())
    );
    assert_eq!(
        run(&mut cart, add("apple", 0, 1)),
        Err("quantity must be positive".into())
    );
    assert_eq!(
        run(
            &mut cart,
            C::RemoveItem {
                sku: "apple".into()
            }
        ),
        Err("apple is not in the cart".into())
    );
    run(&mut cart, add("apple", 1, 50)).unwrap();
    assert_eq!(
        run(&mut cart, add("apple", 1, 60)),
        Err("apple is already in the cart at 50 cents".into())
    );
    assert_eq!(
        run(&mut cart, add("gold", 2, u64::MAX)),
        Err("cart total would overflow".into())
    );
    run(&mut cart, C::Checkout).unwrap();
    assert_eq!(
        run(&mut cart, add("pear", 1, 1)),
        Err("cart is checked out".into())
    );
    assert_eq!(
        run(
            &mut cart,
            C::RemoveItem {
                sku: "apple".into()
            }
        ),
        Err("cart is checked out".into())
    );
}

#[test]
fn snapshots_round_trip() {
    let mut cart = Cart::default();
    run(&mut cart, add("apple", 2, 50)).unwrap();
    assert_eq!(Cart::restore(&cart.snapshot()), Ok(cart));
}
