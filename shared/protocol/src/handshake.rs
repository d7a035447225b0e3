//! The version handshake: the connecting side sends [`Hello`], the server answers
//! [`HelloReply`]. A wrong magic, version or role is refused with a message that says what to do.

use std::io::{Read, Write};

use crate::frame::{read_frame, write_frame};
use crate::{Hello, HelloReply, MAGIC, PROTOCOL_VERSION, ProtocolError, Role};

/// Handshake frames are tiny; a large one is refused before it is read.
const HELLO_MAX_FRAME: u32 = 1024;

/// Client side: send our hello, wait for the reply. Callers set a socket timeout first, so a
/// silent server cannot hang them.
pub fn client<S: Read + Write>(
    s: &mut S,
    role: Role,
    agent: &str,
) -> Result<String, ProtocolError> {
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role,
        agent: agent.to_owned(),
    };
    write_frame(s, &hello, HELLO_MAX_FRAME)?;
    match read_frame(s, HELLO_MAX_FRAME)? {
        HelloReply::Accepted { version, agent } if version == PROTOCOL_VERSION => Ok(agent),
        HelloReply::Accepted { version, .. } => Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        }),
        HelloReply::Rejected { reason, .. } => Err(ProtocolError::Rejected(reason)),
    }
}

/// Server side: read the peer's hello, check magic, version and role, and answer. Returns the
/// peer's role and agent string on success; on failure the peer has been told why.
pub fn server<S: Read + Write>(
    s: &mut S,
    allowed: &[Role],
    agent: &str,
) -> Result<(Role, String), ProtocolError> {
    let hello: Hello = read_frame(s, HELLO_MAX_FRAME)?;
    let checked = check_hello(&hello, allowed);
    let reply = reply_for(&checked, agent);
    match checked {
        // Best effort: the peer may already be gone, and we close either way.
        Err(err) => {
            let _ = write_frame(s, &reply, HELLO_MAX_FRAME);
            Err(err)
        }
        Ok(()) => {
            write_frame(s, &reply, HELLO_MAX_FRAME)?;
            Ok((hello.role, hello.agent))
        }
    }
}

/// The server's checks on a peer's hello: magic, version, and a role allowed on this channel.
/// Transports that carry the handshake otherwise (XPC messages) call this directly.
pub fn check_hello(hello: &Hello, allowed: &[Role]) -> Result<(), ProtocolError> {
    if hello.magic != MAGIC {
        Err(ProtocolError::BadMagic { found: hello.magic })
    } else if hello.version != PROTOCOL_VERSION {
        Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        })
    } else if !allowed.contains(&hello.role) {
        Err(ProtocolError::Unauthorized(format!(
            "role {:?} may not use this socket",
            hello.role
        )))
    } else {
        Ok(())
    }
}

/// The reply that tells the peer the outcome of [`check_hello`], and why on refusal.
pub fn reply_for(checked: &Result<(), ProtocolError>, agent: &str) -> HelloReply {
    match checked {
        Ok(()) => HelloReply::Accepted {
            version: PROTOCOL_VERSION,
            agent: agent.to_owned(),
        },
        Err(e) => HelloReply::Rejected {
            reason: e.to_string(),
            supported: PROTOCOL_VERSION,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn run(
        server_roles: &'static [Role],
        hello: Hello,
    ) -> (Result<(Role, String), ProtocolError>, HelloReply) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || server(&mut b, server_roles, "test-server"));
        write_frame(&mut a, &hello, HELLO_MAX_FRAME).unwrap();
        let reply: HelloReply = read_frame(&mut a, HELLO_MAX_FRAME).unwrap();
        (t.join().unwrap(), reply)
    }

    #[test]
    fn handshake_table() {
        let good = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: Role::Cli,
            agent: "t".into(),
        };
        let cases: Vec<(&str, Hello, bool)> = vec![
            ("accepted", good.clone(), true),
            (
                "bad magic",
                Hello {
                    magic: *b"HTTP",
                    ..good.clone()
                },
                false,
            ),
            (
                "old version",
                Hello {
                    version: PROTOCOL_VERSION + 1,
                    ..good.clone()
                },
                false,
            ),
            (
                "wrong role",
                Hello {
                    role: Role::Helper,
                    ..good.clone()
                },
                false,
            ),
        ];
        for (name, hello, ok) in cases {
            let (res, reply) = run(&[Role::Cli, Role::Extension], hello);
            assert_eq!(res.is_ok(), ok, "{name}: {res:?}");
            assert_eq!(
                matches!(reply, HelloReply::Accepted { .. }),
                ok,
                "{name}: {reply:?}"
            );
        }
    }

    #[test]
    fn client_reports_mismatch() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let _: Hello = read_frame(&mut b, HELLO_MAX_FRAME).unwrap();
            let reply = HelloReply::Accepted {
                version: PROTOCOL_VERSION + 1,
                agent: "x".into(),
            };
            write_frame(&mut b, &reply, HELLO_MAX_FRAME).unwrap();
        });
        let err = client(&mut a, Role::Extension, "t").unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(err, ProtocolError::VersionMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("install matching"), "{err}");
    }
}
