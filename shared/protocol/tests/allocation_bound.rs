//! The codec's allocation bound holds only while every sequence element on the wire is at most
//! 64 bytes in memory: a decoded sequence preallocates up to one element per unread byte
//! (`codec::max_decode_allocation`). This table lists every sequence in the messages, so a new
//! large element type fails here rather than in a fuzzing run (the `control` target found
//! `TransitiveAllow`, 80 bytes, now boxed on the wire).

use protocol::*;

#[test]
fn every_sequence_element_fits_the_bound() {
    let rows: [(&str, usize); 10] = [
        (
            "HelperResponse::Stats errors",
            size_of::<(HelperErrorKind, String)>(),
        ),
        ("counters", size_of::<(String, u64)>()),
        (
            "strings (arguments, scopes, events, lines)",
            size_of::<String>(),
        ),
        ("StatusDetail rules", size_of::<RuleCount>()),
        ("StatsReport latencies", size_of::<LatencySummary>()),
        ("Mutes", size_of::<MuteSpec>()),
        ("TransitiveList", size_of::<Box<TransitiveAllow>>()),
        ("NoticeBatch notices", size_of::<Box<BlockNotice>>()),
        ("frame bytes", size_of::<u8>()),
        ("u64 lists", size_of::<u64>()),
    ];
    for (what, size) in rows {
        assert!(
            size <= 64,
            "{what}: {size} bytes per element breaks the decode bound"
        );
    }
    // What the boxes hide: both are too large to be sequence elements themselves.
    assert!(size_of::<TransitiveAllow>() > 64 && size_of::<BlockNotice>() > 64);
}
