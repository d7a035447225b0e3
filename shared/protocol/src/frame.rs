//! Length-prefixed frames: `u32` little-endian length, then the body. The length is checked
//! against the channel's limit before a single byte of the body is allocated.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ProtocolError, codec};

/// Encode `msg` and write it as one frame (a single `write_all`, so a frame is never torn by a
/// concurrent writer that holds the same lock).
pub fn write_frame<W: Write, T: Serialize>(
    w: &mut W,
    msg: &T,
    max: u32,
) -> Result<(), ProtocolError> {
    let buf = encode_frame(msg, max)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Encode `msg` into a complete frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T, max: u32) -> Result<Vec<u8>, ProtocolError> {
    let body = codec::encode(msg)?;
    let len = u32::try_from(body.len()).ok().filter(|l| *l <= max).ok_or(
        ProtocolError::FrameTooLarge {
            len: body.len() as u64,
            max,
        },
    )?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Read one frame's body. A clean end of stream before the length is [`ProtocolError::Closed`].
pub fn read_frame_body<R: Read>(r: &mut R, max: u32) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ProtocolError::Closed),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(len, max)?];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Read and decode one frame.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R, max: u32) -> Result<T, ProtocolError> {
    codec::decode(&read_frame_body(r, max)?)
}

/// The body length a frame's prefix announces, refused above `max` before anything is
/// allocated for it. Every frame reader goes through here.
pub(crate) fn body_len(prefix: [u8; 4], max: u32) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(prefix);
    if len > max {
        return Err(ProtocolError::FrameTooLarge {
            len: len.into(),
            max,
        });
    }
    Ok(len as usize)
}

/// Split complete frames off the front of a buffer (for non-blocking readers). Returns the body
/// range of the first complete frame, `Ok(None)` if more bytes are needed.
pub fn split_frame(buf: &[u8], max: u32) -> Result<Option<std::ops::Range<usize>>, ProtocolError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let end = 4 + body_len(*prefix, max)?;
    Ok((buf.len() >= end).then_some(4..end))
}

/// Decode a datagram that must hold exactly one whole frame (length prefix included), as an
/// XPC data field does. Trailing bytes, a short body or an oversized length are errors.
pub fn decode_whole_frame<T: DeserializeOwned>(bytes: &[u8], max: u32) -> Result<T, ProtocolError> {
    match split_frame(bytes, max)? {
        Some(body) if body.end == bytes.len() => codec::decode(&bytes[body]),
        Some(body) => Err(ProtocolError::Decode(format!(
            "{} bytes after the frame in one message",
            bytes.len() - body.end
        ))),
        None => Err(ProtocolError::Decode(
            "truncated frame in one message".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let msg = String::from("hello");
        let frame = encode_frame(&msg, 64).unwrap();
        let back: String = read_frame(&mut frame.as_slice(), 64).unwrap();
        assert_eq!(back, msg);
        assert_eq!(split_frame(&frame, 64).unwrap(), Some(4..frame.len()));
        assert_eq!(split_frame(&frame[..3], 64).unwrap(), None);
        assert_eq!(split_frame(&frame[..frame.len() - 1], 64).unwrap(), None);
        assert!(matches!(
            encode_frame(&"x".repeat(100), 64),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let hostile = u32::MAX.to_le_bytes();
        let err = read_frame_body(&mut hostile.as_slice(), 1024).unwrap_err();
        assert!(
            matches!(err, ProtocolError::FrameTooLarge { len, max: 1024 } if len == u64::from(u32::MAX))
        );
        assert!(matches!(
            read_frame_body(&mut [].as_slice(), 1024),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn whole_frame_table() {
        let frame = encode_frame(&String::from("ping"), 64).unwrap();
        let back: String = decode_whole_frame(&frame, 64).unwrap();
        assert_eq!(back, "ping");
        let mut trailing = frame.clone();
        trailing.push(0);
        let mut huge = frame.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        // (input, ok)
        let cases: [(&[u8], bool); 5] = [
            (&frame, true),
            (&trailing, false),
            (&frame[..frame.len() - 1], false),
            (&huge, false),
            (&[], false),
        ];
        for (bytes, ok) in cases {
            assert_eq!(
                decode_whole_frame::<String>(bytes, 64).is_ok(),
                ok,
                "{bytes:?}"
            );
        }
    }
}
