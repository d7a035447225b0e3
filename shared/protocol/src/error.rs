//! Errors of encoding, framing and the handshake, each naming what failed and what to do.

/// A protocol failure. Any of these closes the connection it happened on, and nothing else.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The I/O error is in the message and deliberately not a `source`: error chains
    /// (`anyhow`'s `{:#}`) would print it twice.
    #[error("socket I/O failed: {0}")]
    Io(std::io::Error),
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

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed with its whole chain, an I/O failure names its cause once.
    #[test]
    fn io_errors_are_not_repeated_in_a_chain() {
        let e = ProtocolError::from(std::io::Error::from_raw_os_error(11));
        let mut chain = e.to_string();
        let mut next = std::error::Error::source(&e);
        while let Some(s) = next {
            chain.push_str(&format!(": {s}"));
            next = s.source();
        }
        assert_eq!(chain.matches("os error 11").count(), 1, "{chain}");
    }
}
