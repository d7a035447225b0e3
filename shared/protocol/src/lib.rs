//! Gatehouse's wire protocol between the extension, the helper and the CLI: typed messages,
//! a version handshake, request ids, a deadline budget in every request, and length-prefixed
//! frames with a hard size limit.
//!
//! Frame: `u32` little-endian body length, then the body. Bodies are encoded by [`codec`] only
//! (bincode 2 today; it is unmaintained upstream, RUSTSEC-2025-0141, so it stays behind that one
//! module and a switch is a one-file change). Golden byte fixtures in `tests/golden/` pin each
//! protocol version's format.
// One audited block in `unix` takes ownership of received descriptors; nothing else is unsafe.
#![deny(unsafe_code)]

#[cfg(unix)]
pub mod bounded;
pub mod codec;
mod error;
pub mod frame;
pub mod handshake;
mod messages;
#[cfg(unix)]
pub mod unix;

pub use error::ProtocolError;
pub use messages::*;

/// The protocol version this build speaks. Bump it on any change to a message's encoding, and
/// add a golden fixture directory for the new version.
pub const PROTOCOL_VERSION: u16 = 2;

/// First bytes of every `Hello`, so a stray client is refused before anything else is parsed.
pub const MAGIC: [u8; 4] = *b"GATE";

/// Largest frame on the helper channel. Requests are small (one event's subject); answers are
/// small (a few digests). Anything bigger is an attack or a bug.
pub const HELPER_MAX_FRAME: u32 = 64 * 1024;

/// Largest frame on the control channel: `policy load` carries a whole policy file and
/// `events tail` a page of log lines.
pub const CONTROL_MAX_FRAME: u32 = 8 * 1024 * 1024;
