//! Fuzz target: control-channel bodies, as the extension's control handlers and the CLI decode
//! them. Decoding a request or a response never panics nor allocates more than
//! `codec::max_decode_allocation` of the body (in proportion to it); a decoded message re-encodes to a body that decodes to the same message; a decoded
//! policy load is parsed as the extension would, and a decoded mute is matched against paths.
#![no_main]

use gatehouse_fuzz::{check_position, largest_allocation};
use libfuzzer_sys::fuzz_target;
use policy::Policy;
use protocol::{ControlRequest, ControlResponse, Request, Response, codec};

fn round_trip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let body = codec::encode(v).expect("a decoded message encodes");
    let back: T = codec::decode(&body).expect("a re-encoded body decodes");
    assert_eq!(&back, v, "body round trip");
}

fuzz_target!(|data: &[u8]| {
    let (req, largest) = largest_allocation(|| codec::decode::<Request<ControlRequest>>(data));
    assert!(
        largest <= codec::max_decode_allocation(data.len()),
        "allocated {largest} for {} bytes",
        data.len()
    );
    if let Ok(req) = req {
        round_trip(&req);
        match &req.body {
            ControlRequest::PolicyLoad { origin, text } => {
                if let Err(e) = Policy::parse(origin, text) {
                    check_position(text, &e);
                }
            }
            ControlRequest::MuteAdd(spec) | ControlRequest::MuteRemove(spec) => {
                for path in ["/", "/usr/bin/ls", "/etc/gatehouse/policy.toml", ""] {
                    let _ = spec.matches(path);
                }
            }
            _ => {}
        }
    }
    let (resp, largest) = largest_allocation(|| codec::decode::<Response<ControlResponse>>(data));
    assert!(
        largest <= codec::max_decode_allocation(data.len()),
        "allocated {largest} for {} bytes",
        data.len()
    );
    if let Ok(resp) = resp {
        round_trip(&resp);
    }
});
