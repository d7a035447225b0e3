//! Errors of encoding, framing and the handshake, each naming what failed and what to do.

/// A protocol failure. Any of these closes the connection it happened on, and nothing else.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error(
        "frame of {len} bytes exceeds the {max}-byte limit; peer is misbehaving or speaks another protocol"
    )]
    FrameTooLarge { len: u64, max: u32 },
    #[error("malformed message body: {0}")]
    Decode(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("not a Gatehouse peer (bad magic {found:?})")]
    BadMagic { found: [u8; 4] },
    #[error(
        "protocol version mismatch: we speak {ours}, peer speaks {theirs}; install matching Gatehouse versions"
    )]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("peer rejected the handshake: {0}")]
    Rejected(String),
    #[error("peer sent an unexpected message: {0}")]
    Unexpected(&'static str),
    #[error("peer not authorized: {0}")]
    Unauthorized(String),
}
