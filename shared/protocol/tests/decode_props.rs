//! Property tests for the decoders of untrusted input: arbitrary bytes never panic a decoder,
//! and decoding never allocates more than the frame limit, whatever length fields claim.
//!
//! A counting global allocator records the largest single allocation made while decoding; the
//! test asserts it stays within the frame limit. The record is per thread, because the test
//! harness runs other tests (and their allocations) on other threads at the same time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use protocol::frame::{read_frame, read_frame_body};
use protocol::*;

struct Counting;

thread_local! {
    // `const` initialisation: reading it never allocates, so the allocator may use it.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Record an allocation of `size` bytes on this thread (ignored while the thread is exiting).
fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

fn reset_largest() {
    LARGEST.with(|l| l.set(0));
}

fn largest() -> usize {
    LARGEST.with(Cell::get)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// allocator contract is exactly `System`'s; the atomic bookkeeping never touches the memory.
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

/// Decode `bytes` as every message type a peer can send us; results are ignored, panics are not.
fn decode_all(bytes: &[u8]) {
    let _ = codec::decode::<Hello>(bytes);
    let _ = codec::decode::<HelloReply>(bytes);
    let _ = codec::decode::<Request<HelperRequest>>(bytes);
    let _ = codec::decode::<Response<HelperResponse>>(bytes);
    let _ = codec::decode::<Request<ControlRequest>>(bytes);
    let _ = codec::decode::<Response<ControlResponse>>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    /// Bodies that start like a real message (a valid enum tag) then carry hostile length
    /// varints: the most likely way to make a naive decoder allocate gigabytes.
    #[test]
    fn hostile_lengths_stay_bounded(
        tag in 0u8..12,
        len in prop_oneof![Just(u64::MAX), Just(u64::from(u32::MAX)), any::<u64>()],
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![tag, 0xff];
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&tail);
        // varint: 0xfd = u64 follows (bincode's varint marker for 8-byte values)
        let mut v2 = vec![0, 0, tag, 0xfd];
        v2.extend_from_slice(&len.to_le_bytes());
        v2.extend_from_slice(&tail);
        reset_largest();
        decode_all(&bytes);
        decode_all(&v2);
        let largest = largest();
        prop_assert!(largest <= HELPER_MAX_FRAME as usize, "allocated {largest} bytes decoding {} bytes", v2.len());
    }

    /// A frame stream with any length prefix: refused above the limit before allocating.
    #[test]
    fn frame_reader_bounded(len in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut stream = len.to_le_bytes().to_vec();
        stream.extend_from_slice(&body);
        reset_largest();
        let res = read_frame_body(&mut stream.as_slice(), HELPER_MAX_FRAME);
        if len > HELPER_MAX_FRAME {
            prop_assert!(
                matches!(res, Err(ProtocolError::FrameTooLarge { .. })),
                "expected FrameTooLarge for {} bytes", len
            );
        }
        let _ = read_frame::<_, Request<HelperRequest>>(&mut stream.as_slice(), HELPER_MAX_FRAME);
        prop_assert!(largest() <= HELPER_MAX_FRAME as usize + 64);
    }
}

#[test]
fn every_golden_fixture_truncated_never_panics() {
    // Every prefix of every real message: the decoder sees plausible but cut-off structure.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let body = &bytes[4..];
        for cut in 0..body.len() {
            decode_all(&body[..cut]);
        }
        seen += 1;
    }
    assert!(seen >= 10, "expected the golden fixtures, found {seen}");
}
