//! Serde for byte buffers as hex strings, for saved indexes: JSON has no
//! byte type, and an array of numbers would be four times the size.
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    hex::decode(s.as_bytes())
        .map(Bytes::from)
        .map_err(serde::de::Error::custom)
}
