use serde::{Deserialize, Serialize};

use super::{decode_json, decode_postcard, encode_json};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    Opened {
        owner: String,
    },
    Deposited {
        amount: u64,
    },
    Renamed(String),
    Moved(i32, i32),
    Closed,
    #[serde(rename = "account-frozen")]
    Frozen {
        reason: String,
    },
}

fn roundtrip(event: Event, type_name: &str, json: &str) {
    let (ty, data) = encode_json(&event).unwrap();
    assert_eq!(
        (ty.as_str(), std::str::from_utf8(&data).unwrap()),
        (type_name, json)
    );
    assert_eq!(decode_json::<Event>(&ty, &data).unwrap(), event);
}

#[test]
fn variants_map_to_type_and_json_data() {
    roundtrip(
        Event::Opened {
            owner: "ann \"A\"".into(),
        },
        "Opened",
        r#"{"owner":"ann \"A\""}"#,
    );
    roundtrip(
        Event::Deposited { amount: 5 },
        "Deposited",
        r#"{"amount":5}"#,
    );
    roundtrip(Event::Renamed("x".into()), "Renamed", r#""x""#);
    roundtrip(Event::Moved(-1, 2), "Moved", "[-1,2]");
    roundtrip(Event::Closed, "Closed", "null");
}

#[test]
fn encoding_agrees_with_serde_json_externally_tagged() {
    let event = Event::Frozen {
        reason: "audit".into(),
    };
    let (ty, data) = encode_json(&event).unwrap();
    let expected = serde_json::to_value(&event).unwrap();
    assert_eq!(
        expected[&ty],
        serde_json::from_slice::<serde_json::Value>(&data).unwrap()
    );
}

#[test]
fn serde_renames_are_respected() {
    roundtrip(
        Event::Frozen {
            reason: "audit".into(),
        },
        "account-frozen",
        r#"{"reason":"audit"}"#,
    );
    assert!(decode_json::<Event>("Frozen", br#"{"reason":"x"}"#).is_err());
}

#[test]
fn unit_variants_accept_empty_null_or_any_well_formed_data() {
    for data in ["", " ", "null", "{}", r#"{"ignored":true}"#] {
        assert_eq!(
            decode_json::<Event>("Closed", data.as_bytes()).unwrap(),
            Event::Closed
        );
    }
    assert!(decode_json::<Event>("Closed", b"{").is_err());
}

#[test]
fn decoding_errors_carry_serde_messages() {
    let unknown = decode_json::<Event>("Teleported", b"{}").unwrap_err();
    assert!(
        unknown.to_string().contains("unknown variant `Teleported`"),
        "{unknown}"
    );
    let missing = decode_json::<Event>("Deposited", b"{}").unwrap_err();
    assert!(
        missing.to_string().contains("missing field `amount`"),
        "{missing}"
    );
    let wrong = decode_json::<Event>("Deposited", br#"{"amount":-3}"#).unwrap_err();
    assert!(wrong.to_string().contains("invalid value"), "{wrong}");
    let trailing = decode_json::<Event>("Deposited", br#"{"amount":3} x"#).unwrap_err();
    assert!(trailing.to_string().contains("trailing"), "{trailing}");
}

#[test]
fn a_serde_other_variant_catches_unknown_types() {
    #[derive(Debug, PartialEq, Deserialize)]
    enum Known {
        Closed,
        #[serde(other)]
        Other,
    }
    assert_eq!(
        decode_json::<Known>("Closed", b"null").unwrap(),
        Known::Closed
    );
    assert_eq!(
        decode_json::<Known>("Deposited", br#"{"amount":1}"#).unwrap(),
        Known::Other
    );
}

#[test]
fn binary_payloads_decode_with_postcard() {
    #[derive(Serialize)]
    struct Opened<'a> {
        owner: &'a str,
    }
    let data = postcard::to_allocvec(&Opened { owner: "ann" }).unwrap();
    assert_eq!(
        decode_postcard::<Event>("Opened", &data).unwrap(),
        Event::Opened {
            owner: "ann".into()
        }
    );
    let data = postcard::to_allocvec(&(-1i32, 2i32)).unwrap();
    assert_eq!(
        decode_postcard::<Event>("Moved", &data).unwrap(),
        Event::Moved(-1, 2)
    );
    let data = postcard::to_allocvec("x").unwrap();
    assert_eq!(
        decode_postcard::<Event>("Renamed", &data).unwrap(),
        Event::Renamed("x".into())
    );
    assert_eq!(
        decode_postcard::<Event>("Closed", &[]).unwrap(),
        Event::Closed
    );
    assert!(decode_postcard::<Event>("Deposited", &[]).is_err());
    let data = postcard::to_allocvec(&(5u64,)).unwrap();
    assert!(decode_postcard::<Event>("Deposited", &data).is_ok());
    let trailing = [data, vec![0xff, 0xff]].concat();
    let refused = decode_postcard::<Event>("Deposited", &trailing).unwrap_err();
    assert!(
        refused.to_string().contains("2 trailing bytes"),
        "{refused}"
    );
}

#[test]
fn non_enums_are_rejected() {
    #[derive(Debug, Serialize, Deserialize)]
    struct Plain {
        amount: u64,
    }
    let err = encode_json(&Plain { amount: 1 }).unwrap_err();
    assert!(err.to_string().contains("expected an enum"), "{err}");
    assert!(decode_json::<Plain>("Plain", br#"{"amount":1}"#).is_err());
}
