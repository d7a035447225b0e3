//! Fuzz target: the frame decoder on both channels. Arbitrary bytes as a stream
//! (`read_frame_body`), as a buffer to split (`split_frame`) and as one whole frame of every
//! message type (`decode_whole_frame`): never a panic, lengths refused above the channel's limit
//! before allocating, no allocation out of proportion to the input (`codec::max_decode_allocation`), and a decoded message re-encodes to a
//! frame that decodes to the same message.
#![no_main]

use gatehouse_fuzz::largest_allocation;
use libfuzzer_sys::fuzz_target;
use protocol::frame::{decode_whole_frame, encode_frame, read_frame_body, split_frame};
use protocol::{
    CONTROL_MAX_FRAME, ControlRequest, ControlResponse, HELPER_MAX_FRAME, Hello, HelloReply,
    HelperRequest, HelperResponse, ProtocolError, Request, Response, codec,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decode `data` as one whole frame of `T`; if it decodes, the re-encoded frame must decode to
/// the same value, and so must its body alone.
fn whole<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8], max: u32) {
    let (res, largest) = largest_allocation(|| decode_whole_frame::<T>(data, max));
    // In proportion to the input (the codec's bound), and never above the channel's limit's.
    assert!(
        largest
            <= codec::max_decode_allocation(data.len())
                .min(codec::max_decode_allocation(max as usize)),
        "allocated {largest} bytes decoding a {}-byte frame",
        data.len()
    );
    if let Ok(v) = res {
        let frame = encode_frame(&v, max).expect("a decoded message re-encodes within its limit");
        let back: T = decode_whole_frame(&frame, max).expect("a re-encoded frame decodes");
        assert_eq!(back, v, "frame round trip");
        let body: T = codec::decode(&frame[4..]).expect("a re-encoded body decodes");
        assert_eq!(body, v, "body round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let prefix = data
        .first_chunk::<4>()
        .map(|p| u32::from_le_bytes(*p) as usize);
    for max in [HELPER_MAX_FRAME, CONTROL_MAX_FRAME] {
        let (res, largest) = largest_allocation(|| read_frame_body(&mut &data[..], max));
        assert!(
            largest <= max as usize,
            "allocated {largest} for limit {max}"
        );
        match (res, prefix) {
            (Ok(body), Some(len)) => {
                assert!(len <= max as usize);
                assert_eq!(
                    body,
                    data[4..4 + len],
                    "the body is the bytes after the prefix"
                );
            }
            (Err(ProtocolError::FrameTooLarge { len, .. }), Some(p)) => {
                assert!(
                    len > u64::from(max) && len == p as u64,
                    "refused {len} under {max}"
                );
            }
            (Err(ProtocolError::Closed), p) => assert!(p.is_none(), "closed with a prefix"),
            (Err(ProtocolError::Io(_)), Some(len)) => {
                assert!(
                    len <= max as usize && data.len() < 4 + len,
                    "short body only"
                );
            }
            (res, p) => panic!("unexpected {res:?} for prefix {p:?}"),
        }

        match (split_frame(data, max), prefix) {
            (Ok(Some(r)), Some(len)) => assert!(r == (4..4 + len) && r.end <= data.len()),
            (Ok(None), p) => {
                assert!(p.is_none_or(|len| len <= max as usize && data.len() < 4 + len))
            }
            (Err(ProtocolError::FrameTooLarge { .. }), Some(len)) => assert!(len > max as usize),
            (res, p) => panic!("unexpected split {res:?} for prefix {p:?}"),
        }

        whole::<Hello>(data, max);
        whole::<HelloReply>(data, max);
        whole::<Request<HelperRequest>>(data, max);
        whole::<Response<HelperResponse>>(data, max);
        whole::<Request<ControlRequest>>(data, max);
        whole::<Response<ControlResponse>>(data, max);
    }
});
