//! Fuzz target: both sides of the version handshake against a peer that sends arbitrary bytes.
//! The server accepts only a well-formed hello with our magic, version and an allowed role, and
//! answers exactly one frame (accepted, or rejected with our version) or nothing when it could
//! not read a hello; the client accepts only an `Accepted` reply of our version, after sending
//! exactly its own hello.
#![no_main]

use gatehouse_fuzz::Duplex;
use libfuzzer_sys::fuzz_target;
use protocol::frame::{decode_whole_frame, encode_frame, read_frame};
use protocol::handshake::{check_hello, client, server};
use protocol::{Hello, HelloReply, MAGIC, PROTOCOL_VERSION, Role};

/// The handshake's own frame limit (`handshake::HELLO_MAX_FRAME`).
const HELLO_MAX: u32 = 1024;

fuzz_target!(|data: &[u8]| {
    for allowed in [&[Role::Extension][..], &[Role::Cli, Role::Extension]] {
        let mut peer = Duplex::new(data);
        let res = server(&mut peer, allowed, "fuzz-server");
        // What the peer sent, as the server read it.
        let hello: Option<Hello> = read_frame(&mut &data[..], HELLO_MAX).ok();
        let reply: Option<HelloReply> = (!peer.output.is_empty()).then(|| {
            decode_whole_frame(&peer.output, HELLO_MAX).expect("the server answers one frame")
        });
        match res {
            Ok((role, agent)) => {
                let hello = hello.expect("accepted a hello that decodes");
                assert!(hello.magic == MAGIC && hello.version == PROTOCOL_VERSION);
                assert!(allowed.contains(&role) && role == hello.role && agent == hello.agent);
                assert!(
                    matches!(reply, Some(HelloReply::Accepted { version, .. }) if version == PROTOCOL_VERSION),
                    "accepted with {reply:?}"
                );
            }
            Err(_) => match hello {
                // A hello was read: the peer is told why, with our version.
                Some(h) => {
                    assert!(
                        check_hello(&h, allowed).is_err(),
                        "refused a valid hello {h:?}"
                    );
                    assert!(
                        matches!(reply, Some(HelloReply::Rejected { supported, .. }) if supported == PROTOCOL_VERSION),
                        "refused with {reply:?}"
                    );
                }
                None => assert!(reply.is_none(), "answered {reply:?} to no hello"),
            },
        }
    }

    let mut peer = Duplex::new(data);
    let res = client(&mut peer, Role::Cli, "fuzz-client");
    let ours = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        role: Role::Cli,
        agent: "fuzz-client".into(),
    };
    assert_eq!(
        peer.output,
        encode_frame(&ours, HELLO_MAX).unwrap(),
        "the client sends exactly its hello"
    );
    let reply: Option<HelloReply> = read_frame(&mut &data[..], HELLO_MAX).ok();
    match res {
        Ok(agent) => assert!(
            matches!(&reply, Some(HelloReply::Accepted { version, agent: a }) if *version == PROTOCOL_VERSION && *a == agent),
            "the client accepted {reply:?}"
        ),
        Err(_) => assert!(
            !matches!(&reply, Some(HelloReply::Accepted { version, .. }) if *version == PROTOCOL_VERSION),
            "the client refused {reply:?}"
        ),
    }
});
