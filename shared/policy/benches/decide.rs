//! decide() latency with 10 and 10,000 rules of mixed kinds (SHA-256, CDHash, signing ID,
//! certificate, team ID, path prefixes, watch items), for representative events. The goal is
//! p99 under 1 µs at 10,000 rules (docs/DESIGN.md 7).

use std::hint::black_box;

mod support;

use support::{EVENTS, SIZES, events, policy};

fn main() {
    divan::main();
}

#[divan::bench(args = SIZES, consts = [0, 1, 2, 3, 4, 5], sample_count = 1000, sample_size = 64)]
fn decide<const E: usize>(bencher: divan::Bencher<'_, '_>, rules: usize) {
    let p = policy(rules);
    let (name, ev, facts) = events().into_iter().nth(E).unwrap();
    debug_assert_eq!(name, EVENTS[E]);
    bencher.bench_local(|| black_box(p.decide(black_box(&ev), black_box(&facts))));
}
