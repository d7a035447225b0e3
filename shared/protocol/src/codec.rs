//! The one place that knows the body encoding (bincode 2, serde mode). Decoding allocates in
//! proportion to the body it reads: a hostile length field inside a body cannot make us allocate
//! more than a small multiple of the bytes that carried it.
//!
//! bincode is unmaintained upstream (RUSTSEC-2025-0141). Switching formats means rewriting this
//! file and regenerating the golden fixtures under a new protocol version; nothing else changes.
//!
//! Two mechanisms keep allocation proportional (found by the `frame` fuzz target: a 16-byte
//! body declaring a long sequence made serde preallocate 1 MiB):
//! - strings and byte buffers: bincode claims a declared length against its byte limit before
//!   it allocates, so the limit follows the body (16 to 64 times its length, at least 4 KiB),
//!   not the frame maximum: a longer declared length is refused unallocated;
//! - sequences and maps: bincode's serde mode hands serde the declared length as a size hint
//!   and serde preallocates up to 1 MiB from it without claiming anything. [`Capped`] wraps the
//!   deserializer and caps every hint at the bytes still unread, which an honest body always
//!   satisfies (each element of a non-zero-sized type takes at least one byte).

use std::cell::Cell;
use std::fmt;

use bincode::de::read::Reader;
use bincode::error::DecodeError;
use serde::Serialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::ProtocolError;

/// The configuration is part of the wire format: little-endian, variable-length integers. The
/// decode limit is not (it only refuses), so [`decode`] picks it per body.
fn config<const LIMIT: usize>() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
> {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<LIMIT>()
}

/// Encode a message body. Fails only for types serde cannot represent, or a body over the
/// largest frame (8 MiB).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    bincode::serde::encode_to_vec(value, config::<{ crate::CONTROL_MAX_FRAME as usize }>())
        .map_err(|e| ProtocolError::Encode(e.to_string()))
}

/// The largest single allocation a [`decode`] of a `len`-byte body may make: 64 bytes per body
/// byte plus 4 KiB. The byte limit is at most 64 times the body (at least 4 KiB), and a
/// preallocated collection holds at most one element per unread byte, none larger than 64
/// bytes (`LatencySummary` is the largest). Tests and the fuzz targets assert it.
pub const fn max_decode_allocation(len: usize) -> usize {
    64 * len + 4096
}

/// Decode a message body that must use all of `bytes`. Never panics; no allocation exceeds
/// [`max_decode_allocation`] of its length (see the module comment).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    // bincode claims a primitive's full width against the limit however short its varint (a
    // one-byte `u64` claims 8, a `u128` 16), so an honest body claims up to 16 times its
    // length. The limit is a const generic: take the smallest power of four at or above that.
    let (value, unread) = match bytes.len() {
        n if n <= 1 << 8 => decode_limited::<T, { 1 << 12 }>(bytes),
        n if n <= 1 << 10 => decode_limited::<T, { 1 << 14 }>(bytes),
        n if n <= 1 << 12 => decode_limited::<T, { 1 << 16 }>(bytes),
        n if n <= 1 << 14 => decode_limited::<T, { 1 << 18 }>(bytes),
        n if n <= 1 << 16 => decode_limited::<T, { 1 << 20 }>(bytes),
        n if n <= 1 << 18 => decode_limited::<T, { 1 << 22 }>(bytes),
        n if n <= 1 << 20 => decode_limited::<T, { 1 << 24 }>(bytes),
        n if n <= 1 << 22 => decode_limited::<T, { 1 << 26 }>(bytes),
        n if n <= crate::CONTROL_MAX_FRAME as usize => decode_limited::<T, { 1 << 27 }>(bytes),
        n => {
            return Err(ProtocolError::FrameTooLarge {
                len: n as u64,
                max: crate::CONTROL_MAX_FRAME,
            });
        }
    }
    .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if unread != 0 {
        return Err(ProtocolError::Decode(format!(
            "{unread} trailing bytes after the message"
        )));
    }
    Ok(value)
}

/// Decode with byte limit `LIMIT`; returns the value and how many bytes were left unread.
fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    let left = Cell::new(bytes.len());
    let reader = Body {
        rest: bytes,
        left: &left,
    };
    let mut decoder = bincode::serde::OwnedSerdeDecoder::from_reader(reader, config::<LIMIT>());
    let value = T::deserialize(Capped {
        inner: decoder.as_deserializer(),
        left: &left,
    })?;
    Ok((value, left.get()))
}

/// The body being decoded; publishes how many bytes are still unread for [`Capped`].
struct Body<'a> {
    rest: &'a [u8],
    left: &'a Cell<usize>,
}

impl Reader for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> Result<(), DecodeError> {
        let Some((head, tail)) = self.rest.split_at_checked(out.len()) else {
            return Err(DecodeError::UnexpectedEnd {
                additional: out.len() - self.rest.len(),
            });
        };
        out.copy_from_slice(head);
        self.rest = tail;
        self.left.set(tail.len());
        Ok(())
    }
}

/// A deserializer, visitor, seed or access wrapped so that every sequence or map it reaches
/// reports a size hint no larger than the bytes still unread. Everything else is forwarded.
struct Capped<'c, X> {
    inner: X,
    left: &'c Cell<usize>,
}

impl<'c, X> Capped<'c, X> {
    fn wrap<Y>(&self, inner: Y) -> Capped<'c, Y> {
        Capped {
            inner,
            left: self.left,
        }
    }

    fn cap(&self, hint: Option<usize>) -> Option<usize> {
        hint.map(|h| h.min(self.left.get()))
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Capped<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq();
        deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier(); deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Capped<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char); visit_str(&str);
        visit_borrowed_str(&'de str); visit_string(String); visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let d = self.wrap(d);
        self.inner.visit_some(d)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let d = self.wrap(d);
        self.inner.visit_newtype_struct(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let seq = self.wrap(seq);
        self.inner.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let map = self.wrap(map);
        self.inner.visit_map(map)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let data = self.wrap(data);
        self.inner.visit_enum(data)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Capped<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        let d = self.wrap(d);
        self.inner.deserialize(d)
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Capped<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.cap(self.inner.size_hint())
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Capped<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.cap(self.inner.size_hint())
    }
}

impl<'c, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Capped<'c, A> {
    type Error = A::Error;
    type Variant = Capped<'c, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let seed = self.wrap(seed);
        let left = self.left;
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((
            value,
            Capped {
                inner: variant,
                left,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Capped<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}
