//! The mapping between Rust enums and foldhost's `(type, data)` pairs.
//!
//! Events and commands are enums in serde's default, externally tagged
//! representation. A variant's (possibly renamed) name is the type; its payload
//! is the data:
//!
//! | Rust value                   | type          | JSON data       |
//! |------------------------------|---------------|-----------------|
//! | `Deposited { amount: 5 }`    | `"Deposited"` | `{"amount":5}`  |
//! | `Renamed(String::from("x"))` | `"Renamed"`   | `"x"`           |
//! | `Moved(1, 2)`                | `"Moved"`     | `[1,2]`         |
//! | `Closed`                     | `"Closed"`    | `null`          |
//!
//! Binary events carry their payload encoded with postcard instead of JSON.
//! When decoding a unit variant the data is ignored as long as it is well
//! formed, so a `#[serde(other)]` unit variant can catch event types a plugin
//! does not know.
//!
//! These functions are plain Rust and work on every target, so native code
//! (tests, benchmarks) can fold the same events the plugin folds inside wasm.

mod de;
mod ser;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub(crate) fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(msg)
    }
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(msg)
    }
}

/// Decodes the variant `type_name` of `T` from its JSON payload.
pub fn decode_json<T: DeserializeOwned>(type_name: &str, data: &[u8]) -> Result<T, Error> {
    T::deserialize(de::Tagged::new(type_name, de::Json(data)))
}

/// Decodes the variant `type_name` of `T` from its postcard payload.
pub fn decode_postcard<T: DeserializeOwned>(type_name: &str, data: &[u8]) -> Result<T, Error> {
    T::deserialize(de::Tagged::new(type_name, de::Postcard(data)))
}

/// Encodes an enum value as its variant name and JSON payload.
pub fn encode_json<T: Serialize + ?Sized>(value: &T) -> Result<(String, Vec<u8>), Error> {
    value.serialize(ser::VariantSerializer)
}

#[cfg(test)]
mod tests;
