//! A `Serializer` that splits an externally tagged enum value into its variant
//! name and its payload's JSON.

use serde::Serialize;
use serde::ser::{self, Impossible};

use super::Error;

type Encoded = (String, Vec<u8>);

/// Accepts only enum variants; anything else is a plugin bug reported as an error.
pub(super) struct VariantSerializer;

fn not_an_enum(kind: &str) -> Error {
    Error::new(format_args!(
        "expected an enum (externally tagged) but got {kind}"
    ))
}

macro_rules! reject {
    ($($method:ident($($arg:ty),*) $kind:literal;)*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<Encoded, Error> {
            Err(not_an_enum($kind))
        }
    )*};
}

impl ser::Serializer for VariantSerializer {
    type Ok = Encoded;
    type Error = Error;
    type SerializeSeq = Impossible<Encoded, Error>;
    type SerializeTuple = Impossible<Encoded, Error>;
    type SerializeTupleStruct = Impossible<Encoded, Error>;
    type SerializeTupleVariant = Payload;
    type SerializeMap = Impossible<Encoded, Error>;
    type SerializeStruct = Impossible<Encoded, Error>;
    type SerializeStructVariant = Payload;

    reject! {
        serialize_bool(bool) "a bool";
        serialize_i8(i8) "an integer";
        serialize_i16(i16) "an integer";
        serialize_i32(i32) "an integer";
        serialize_i64(i64) "an integer";
        serialize_i128(i128) "an integer";
        serialize_u8(u8) "an integer";
        serialize_u16(u16) "an integer";
        serialize_u32(u32) "an integer";
        serialize_u64(u64) "an integer";
        serialize_u128(u128) "an integer";
        serialize_f32(f32) "a float";
        serialize_f64(f64) "a float";
        serialize_char(char) "a char";
        serialize_str(&str) "a string";
        serialize_bytes(&[u8]) "bytes";
        serialize_none() "an option";
        serialize_unit() "a unit";
        serialize_unit_struct(&'static str) "a unit struct";
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Encoded, Error> {
        Err(not_an_enum("an option"))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Encoded, Error> {
        // Transparent wrappers around an event enum are fine.
        value.serialize(self)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Encoded, Error> {
        Ok((variant.to_owned(), b"null".to_vec()))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Encoded, Error> {
        let data = serde_json::to_vec(value).map_err(Error::new)?;
        Ok((variant.to_owned(), data))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Payload, Error> {
        Ok(Payload::open(variant, b'['))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Payload, Error> {
        Ok(Payload::open(variant, b'{'))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(not_an_enum("a sequence"))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(not_an_enum("a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(not_an_enum("a tuple struct"))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(not_an_enum("a map"))
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(not_an_enum("a struct"))
    }
}

/// The compact JSON array (tuple variant) or object (struct variant) being
/// written for a variant's fields, exactly as `serde_json` would write it.
pub(super) struct Payload {
    variant: &'static str,
    json: Vec<u8>,
}

impl Payload {
    fn open(variant: &'static str, bracket: u8) -> Self {
        Self {
            variant,
            json: vec![bracket],
        }
    }

    fn separate(&mut self) {
        if self.json.len() > 1 {
            self.json.push(b',');
        }
    }

    fn write<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        serde_json::to_writer(&mut self.json, value).map_err(Error::new)
    }

    fn close(mut self, bracket: u8) -> Encoded {
        self.json.push(bracket);
        (self.variant.to_owned(), self.json)
    }
}

impl ser::SerializeTupleVariant for Payload {
    type Ok = Encoded;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.separate();
        self.write(value)
    }

    fn end(self) -> Result<Encoded, Error> {
        Ok(self.close(b']'))
    }
}

impl ser::SerializeStructVariant for Payload {
    type Ok = Encoded;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.separate();
        self.write(key)?;
        self.json.push(b':');
        self.write(value)
    }

    fn end(self) -> Result<Encoded, Error> {
        Ok(self.close(b'}'))
    }
}
