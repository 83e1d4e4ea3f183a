//! A `Deserializer` that presents `(type, payload)` as an externally tagged enum.

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

use super::Error;
use crate::text;

/// The enum value whose variant is `type_name` and whose payload is `payload`.
pub(super) struct Tagged<'a, P> {
    type_name: &'a str,
    payload: P,
}

impl<'a, P> Tagged<'a, P> {
    pub(super) fn new(type_name: &'a str, payload: P) -> Self {
        Self { type_name, payload }
    }
}

impl<'de, P: de::VariantAccess<'de, Error = Error>> de::Deserializer<'de> for Tagged<'_, P> {
    type Error = Error;

    /// Whatever is asked for, the input is an enum; non-enum targets report
    /// "invalid type: enum".
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, P: de::VariantAccess<'de, Error = Error>> de::EnumAccess<'de> for Tagged<'_, P> {
    type Error = Error;
    type Variant = P;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, P), Error> {
        let name: StrDeserializer<'_, Error> = self.type_name.into_deserializer();
        Ok((seed.deserialize(name)?, self.payload))
    }
}

/// A JSON payload.
pub(super) struct Json<'de>(pub(super) &'de [u8]);

impl<'de> Json<'de> {
    /// Runs `f` on a deserializer over the whole payload, rejecting trailing input.
    ///
    /// The payload is checked to be UTF-8 once, up front, so serde_json reads
    /// it as text and does not check every string (each field name) again.
    fn parse<T>(
        self,
        f: impl FnOnce(
            &mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
        ) -> serde_json::Result<T>,
    ) -> Result<T, Error> {
        let text = text::utf8(self.0).ok_or_else(|| Error::new("JSON data is not UTF-8"))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let value = f(&mut de).and_then(|value| de.end().map(|()| value));
        value.map_err(Error::new)
    }
}

impl<'de> de::VariantAccess<'de> for Json<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.parse(|de| de::Deserialize::deserialize(de).map(|IgnoredAny| ()))
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        self.parse(|de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.parse(|de| de::Deserializer::deserialize_tuple(de, len, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.parse(|de| de::Deserializer::deserialize_struct(de, "", fields, visitor))
    }
}

/// A postcard payload.
pub(super) struct Postcard<'de>(pub(super) &'de [u8]);

impl<'de> Postcard<'de> {
    /// Runs `f` on a deserializer over the whole payload, rejecting trailing bytes as the JSON
    /// path rejects trailing input (`postcard::from_bytes` ignores them: `[5, 255, 255]` would
    /// fold as an amount of 5).
    fn parse<T>(
        self,
        f: impl FnOnce(
            &mut postcard::Deserializer<'de, postcard::de_flavors::Slice<'de>>,
        ) -> postcard::Result<T>,
    ) -> Result<T, Error> {
        let mut de = postcard::Deserializer::from_bytes(self.0);
        let value = f(&mut de).map_err(Error::new)?;
        match de.finalize().map_err(Error::new)? {
            [] => Ok(value),
            rest => Err(Error::new(format!(
                "{} trailing bytes after the postcard data",
                rest.len()
            ))),
        }
    }
}

impl<'de> de::VariantAccess<'de> for Postcard<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        self.parse(|de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.parse(|de| de::Deserializer::deserialize_tuple(de, len, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.parse(|de| de::Deserializer::deserialize_struct(de, "", fields, visitor))
    }
}
