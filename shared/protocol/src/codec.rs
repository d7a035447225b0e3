//! The one place that knows the body encoding (bincode 2, serde mode). Every decode is bounded
//! by an explicit byte limit, so a hostile length field inside a body cannot make us allocate
//! more than the frame that carried it.
//!
//! bincode is unmaintained upstream (RUSTSEC-2025-0141). Switching formats means rewriting this
//! file and regenerating the golden fixtures under a new protocol version; nothing else changes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProtocolError;

/// The configuration is part of the wire format: little-endian, variable-length integers, and a
/// decode limit. Changing any of it needs a new `PROTOCOL_VERSION`.
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

/// Decode a message body that must use all of `bytes`. Never panics; never allocates more than
/// `bytes.len()` worth of elements (the limit is the body length itself).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    // The limit is a const generic, so pick the smallest fixed bound that covers this body. The
    // body was already bounded by its frame limit, so this is at most CONTROL_MAX_FRAME.
    let (value, used) = if bytes.len() <= crate::HELPER_MAX_FRAME as usize {
        bincode::serde::decode_from_slice(bytes, config::<{ crate::HELPER_MAX_FRAME as usize }>())
    } else if bytes.len() <= crate::CONTROL_MAX_FRAME as usize {
        bincode::serde::decode_from_slice(bytes, config::<{ crate::CONTROL_MAX_FRAME as usize }>())
    } else {
        return Err(ProtocolError::FrameTooLarge {
            len: bytes.len() as u64,
            max: crate::CONTROL_MAX_FRAME,
        });
    }
    .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}
