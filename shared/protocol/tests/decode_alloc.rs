//! Decoding allocates in proportion to the body, whatever its length fields declare (the codec
//! module's guarantee): a table of real messages whose last field, an empty sequence or string,
//! has its length replaced by a hostile one, decoded under a counting global allocator.
//!
//! The `frame` fuzz target found the gap this pins: a 16-byte body declaring a long sequence
//! made serde preallocate 1 MiB from bincode's size hint.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use protocol::*;

struct Counting;

thread_local! {
    // `const` initialisation: reading it never allocates, so the allocator may use it. Per
    // thread, because the harness runs other tests on other threads at the same time.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    let _ = TOTAL.try_with(|t| t.set(t.get().saturating_add(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// allocator contract is exactly `System`'s; the bookkeeping never touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `System.alloc` with this `layout` (via `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr`/`layout` came from this allocator, which is `System` underneath.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// (largest single allocation, total bytes allocated) while running `f` on this thread.
fn measure(f: impl FnOnce()) -> (usize, usize) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    f();
    (LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

/// bincode varints: one byte below 251, else a marker and a fixed-width integer.
fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [&[251u8][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252u8][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &n.to_le_bytes()].concat(),
    }
}

/// `msg` encoded, with its final byte (the zero length of an empty last field) replaced by the
/// varint `len`.
fn hostile<T: serde::Serialize>(msg: &T, len: u64) -> Vec<u8> {
    let mut body = codec::encode(msg).unwrap();
    assert_eq!(body.pop(), Some(0), "the last field must be empty");
    body.extend(varint(len));
    body
}

type Decode = fn(&[u8]) -> bool;

fn decodes<T: serde::de::DeserializeOwned>(b: &[u8]) -> bool {
    codec::decode::<T>(b).is_ok()
}

#[test]
fn hostile_lengths_allocate_in_proportion_to_the_body() {
    let stats = Response {
        id: 1,
        body: HelperResponse::Stats { counters: vec![] },
    };
    let errors = Response {
        id: 1,
        body: HelperResponse::Analysis {
            facts: model::Facts::NONE,
            errors: vec![],
        },
    };
    let mutes = Response {
        id: 1,
        body: ControlResponse::Mutes(vec![]),
    };
    let events = Response {
        id: 1,
        body: ControlResponse::Events(vec![]),
    };
    let load = Request {
        id: 1,
        budget_us: 0,
        body: ControlRequest::PolicyLoad {
            origin: String::new(),
            text: String::new(),
        },
    };
    let error = Response {
        id: 1,
        body: HelperResponse::Error {
            kind: HelperErrorKind::Io,
            message: String::new(),
        },
    };
    let helper_resp: Decode = decodes::<Response<HelperResponse>>;
    let control_resp: Decode = decodes::<Response<ControlResponse>>;
    let control_req: Decode = decodes::<Request<ControlRequest>>;
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, Decode)> = vec![
        ("helper counters, 2^24 declared", hostile(&stats, 1 << 24), helper_resp),
        ("helper counters, u64::MAX declared", hostile(&stats, u64::MAX), helper_resp),
        ("helper counters, 40 000 declared", hostile(&stats, 40_000), helper_resp),
        ("analysis errors, 2^20 declared", hostile(&errors, 1 << 20), helper_resp),
        ("mutes, 2^24 declared", hostile(&mutes, 1 << 24), control_resp),
        ("events, 2^24 declared", hostile(&events, 1 << 24), control_resp),
        ("helper error message, 60 000 bytes declared", hostile(&error, 60_000), helper_resp),
        ("policy text, 8 MiB declared", hostile(&load, 8 << 20), control_req),
        ("policy text, 4 MiB declared", hostile(&load, 4 << 20), control_req),
        // The `control` fuzz target's input: a 1060-byte status report whose collections
        // declare more elements than the bytes left.
        ("fuzz: control response 1060 bytes", include_bytes!("fuzz-regressions/control-latencies-1060.bin").to_vec(), control_resp),
        // 402 bytes declaring 397 transitive allows of 80 bytes each (now boxed: 8 bytes).
        ("fuzz: control response 402 bytes", include_bytes!("fuzz-regressions/control-transitive-list-402.bin").to_vec(), control_resp),
    ];
    for (what, body, decode) in cases {
        let (largest, total) =
            measure(|| assert!(!decode(&body), "{what}: a truncated body decoded"));
        // The codec's documented bound, proportional to the body, never the frame limit.
        let bound = codec::max_decode_allocation(body.len());
        assert!(
            largest <= bound && total <= 4 * bound,
            "{what}: decoding {} bytes allocated {largest} bytes at once, {total} in all (bound {bound})",
            body.len()
        );
    }
}

#[test]
fn honest_collections_still_decode() {
    // The size-hint cap must never refuse a real message: many small elements fill the body.
    let counters: Vec<(String, u64)> = (0..5000).map(|i| (String::new(), i)).collect();
    let msg = Response {
        id: 7,
        body: HelperResponse::Stats { counters },
    };
    let body = codec::encode(&msg).unwrap();
    assert_eq!(
        codec::decode::<Response<HelperResponse>>(&body).unwrap(),
        msg
    );
    let events = Response {
        id: 7,
        body: ControlResponse::Events(vec!["x".repeat(70_000); 3]),
    };
    let body = codec::encode(&events).unwrap();
    assert_eq!(
        codec::decode::<Response<ControlResponse>>(&body).unwrap(),
        events
    );
}
